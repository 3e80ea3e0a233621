"""Pytest plugin: the fake OpenAI upstream as a subprocess, and the ``openai_upstream`` fixture.

Register with ``pytest_plugins = ["tests.support.fixtures"]``. The server runs in its own process
(see ``tests/support/upstream.py``) so it never competes with the code under test for an event
loop; it is started once per session and its control state and stats are reset before each test.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.support.processes import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
_START_TIMEOUT_S = 20.0


class UpstreamServer:
    """Handle on one ``python -m tests.support.upstream`` process."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, extra_args: tuple[str, ...] = ()) -> None:
        self.host = host
        self.port = port
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> UpstreamServer:
        """Spawn the server and wait for its ``LISTENING host:port`` line."""
        if self.process is not None:
            return self
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "tests.support.upstream", "--host", self.host, "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*cmd, *self.extra_args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        line = self._read_first_line()
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"upstream did not start, first stdout line: {line!r}")
        host, _, port = line.removeprefix("LISTENING ").strip().rpartition(":")
        self.host, self.port = host, int(port)
        return self

    def _read_first_line(self) -> str:
        # readline() has no timeout; a thread keeps a wedged child from hanging the session.
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(_START_TIMEOUT_S)
        return result[0].decode() if result else ""

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 5 s)."""
        proc, self.process = self.process, None
        if proc is None:
            return
        stop_process(proc, 5)
        if proc.stdout is not None:
            proc.stdout.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # addresses --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI ``base_url`` (what the SDK, LiteLLM or the gateway config wants)."""
        return f"{self.url}/v1"

    # control plane (sync) ---------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            payload = None if body is None else json.dumps(body)
            headers = {"content-type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{method} {path} -> {resp.status}: {data!r}")
            return json.loads(data)
        finally:
            conn.close()

    def control(self, **knobs: Any) -> dict[str, Any]:
        """Inject behaviour (``fail_next``, ``latency_ms``, ...); returns the resulting control state."""
        result: dict[str, Any] = self._call("POST", "/_control", knobs)
        return result

    def reset(self) -> None:
        """Default control state, empty stats and recorded requests."""
        self.control(reset=True, reset_stats=True)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_stats")
        return result

    def requests(self) -> list[dict[str, Any]]:
        """Requests recorded since ``control(record=True)`` (newest last, 200 kept)."""
        result: list[dict[str, Any]] = self._call("GET", "/_requests")
        return result

    # control plane (async): a thread hop is plenty for a handful of control calls per test -----
    async def acontrol(self, **knobs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.control, **knobs)

    async def areset(self) -> None:
        await asyncio.to_thread(self.reset)

    async def astats(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.stats)

    async def arequests(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.requests)


@pytest.fixture(scope="session")
def openai_upstream_session() -> Iterator[UpstreamServer]:
    """One upstream process for the whole session: spawning costs ~0.3 s, resetting is free."""
    with UpstreamServer() as server:
        yield server


@pytest.fixture
def openai_upstream(openai_upstream_session: UpstreamServer) -> UpstreamServer:
    """The session upstream, with control state and stats reset so each test starts clean."""
    if not openai_upstream_session.alive:  # a test killed it on purpose (or it crashed): respawn
        openai_upstream_session.stop()
        openai_upstream_session.start()
    openai_upstream_session.reset()
    return openai_upstream_session
