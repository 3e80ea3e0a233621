"""Serving one runtime process: uvicorn + uvloop + httptools, and a graceful drain.

On SIGTERM (sent after the pod's preStop sleep, once the endpoints no longer list it):

1. readiness turns false at once, and for `server.keepAliveDrainSeconds` the runtime keeps
   serving whatever still reaches it, new connections and kept-alive ones alike (a kept-alive
   connection through a Service stays pinned to this pod), every answer with `Connection: close`,
   so each client moves to another pod on its next request without a failed one (the window does
   not end early when no client is left: new connections may still arrive until every node's
   proxy rules caught up, and a listener closed under them would reset them);
2. then the listener closes, connections idle since (which their clients have expired by then)
   close, and in-flight requests and streams get the rest of `server.drainSeconds` to finish;
3. answers still in production at that deadline are left `producing`, to be taken over by the
   pod their client resumes on (never recorded as failed); state is flushed, exit code 0.

SIGINT (Ctrl-C) skips the serving window; a second signal ends it early.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import resource
import signal
import socket
import time
from collections.abc import Generator
from types import FrameType

import uvicorn

from strata_runtime.app import create_app
from strata_runtime.config import RuntimeConfig
from strata_runtime.http_protocol import protocol_with
from strata_runtime.services import Services

log = logging.getLogger("strata.runtime")

# The cyclic collector's generation thresholds while serving (Python's default: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 10)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, services: Services, *, drain_seconds: float,
                 keep_alive_drain_seconds: float):
        super().__init__(config)
        self.services = services
        self.drain_seconds = drain_seconds
        self.keep_alive_drain_seconds = keep_alive_drain_seconds
        self._window_ends: float | None = None
        self._told_in_flight = False
        self._requests_at_signal = 0

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
        if self.services.draining:  # a second signal: no more serving window
            super().handle_exit(sig, frame)
            return
        now = time.monotonic()
        window = min(self.keep_alive_drain_seconds, self.drain_seconds or self.keep_alive_drain_seconds)
        log.info("signal received: draining", extra={"signal": sig, "serving_seconds": window})
        self.services.draining = True  # from now on every answer says `Connection: close`
        if self.drain_seconds:
            self.services.drain_deadline = now + self.drain_seconds
        if sig == signal.SIGTERM and window > 0:
            self._window_ends = now + window
            self._requests_at_signal = self.server_state.total_requests
        else:
            super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.services.draining and not self._told_in_flight:
            self._told_in_flight = True
            self._close_after_answers_in_progress()
        if self._window_ends is not None and time.monotonic() >= self._window_ends:
            self.should_exit = True
            self._window_ends = None
            log.info("drain: serving window over, closing the listener", extra={
                "requests_since_signal": self.server_state.total_requests - self._requests_at_signal,
                "open_connections": len(self.server_state.connections)})
        return await super().on_tick(counter)

    def _close_after_answers_in_progress(self) -> None:
        """Requests that arrived before SIGTERM and are not answered yet: their answer says
        `Connection: close` too (the protocol does it for requests arriving from now on). An answer
        already started keeps its connection open: closing right after it would race the client's
        next request; that connection is then idle, like any other."""
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not cycle.response_started:
                cycle.keep_alive = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        settle_heap()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.services.closing = True
        deadline = self.services.drain_deadline
        if deadline is not None:  # what is left of drainSeconds after the serving window
            self.config.timeout_graceful_shutdown = max(1, round(deadline - time.monotonic()))
        await super().shutdown(sockets)


def settle_heap() -> None:
    """Keep the cyclic garbage collector off what start-up built, and run its young passes less often.

    By the time the runtime serves, its heap holds every imported module, the app, the config and
    the services: hundreds of thousands of objects that live as long as the process. Left in the
    collector's oldest generation, each full collection walks all of them (~70 ms of CPU per pass
    under a few hundred open streams, several passes a minute); frozen, a full pass walks only what
    was allocated since. Streams allocate many short-lived containers, so the youngest generation
    is collected after more allocations than the default 700 (fewer passes, fewer survivors promoted
    by a pass that happened to catch them alive); cyclic garbage waits a little longer, bounded by
    the threshold.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def raise_open_file_limit() -> int:
    """Lift the soft open-file limit to the hard one: every open stream holds two sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit", extra={"soft": soft, "hard": hard})
    return soft


def serve(config: RuntimeConfig, host: str | None = None, port: int | None = None) -> None:
    raise_open_file_limit()
    app = create_app(config)
    services: Services = app.state.services
    uv_config = uvicorn.Config(
        app,
        host=host or config.server.host,
        port=config.server.port if port is None else port,
        loop="uvloop",
        # httptools, with bounds on the request head; `Connection: close` on every answer once draining
        http=protocol_with(config.server.limits, draining=lambda: services.draining),
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(config.server.drain_seconds) or None,
        timeout_keep_alive=75,
        backlog=4096,
    )
    server = DrainingServer(uv_config, services, drain_seconds=config.server.drain_seconds,
                            keep_alive_drain_seconds=config.server.keep_alive_drain_seconds)
    server.run()
