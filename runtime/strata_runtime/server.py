"""Serving one runtime process: uvicorn + uvloop + httptools, and a graceful drain.

On SIGTERM readiness turns false at once, uvicorn stops accepting, in-flight requests
and streams get up to `server.drainSeconds` to finish, state is flushed, exit code 0.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator
from types import FrameType

import uvicorn

from strata_runtime.app import create_app
from strata_runtime.config import RuntimeConfig
from strata_runtime.services import Services

log = logging.getLogger("strata.runtime")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, services: Services):
        super().__init__(config)
        self.services = services

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises a captured SIGTERM after shutdown, turning a clean drain into
        # exit status -15; a drained runtime exits 0 so Kubernetes sees a clean stop.
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.services.draining:
            log.info("signal received: draining", extra={"signal": sig})
        self.services.draining = True
        super().handle_exit(sig, frame)


def serve(config: RuntimeConfig, host: str | None = None, port: int | None = None) -> None:
    app = create_app(config)
    uv_config = uvicorn.Config(
        app,
        host=host or config.server.host,
        port=config.server.port if port is None else port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(config.server.drain_seconds) or None,
        timeout_keep_alive=75,
        backlog=4096,
    )
    server = DrainingServer(uv_config, app.state.services)
    server.run()
