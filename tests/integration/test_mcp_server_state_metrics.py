"""MCP client server state on /metrics and in the log, against a real runtime process and a real
streamable-HTTP MCP server (the demo server) that is killed and started again on the same port."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.mcp_processes import DemoHttpServer
from tests.support.runtime_process import RuntimeProcess, embedded_config

pytestmark = pytest.mark.integration

FAST = {"probeIntervalSeconds": 0.5, "reconnectMaxSeconds": 1.0, "connectTimeoutSeconds": 60, "timeoutSeconds": 5}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[RuntimeProcess, DemoHttpServer]]:
    server = DemoHttpServer(tmp_path, name="web").start()
    config = embedded_config(tmp_path, mcpServers=[server.config(**FAST, allowedAgents=["support"])])
    runtime = RuntimeProcess(config, tmp_path).start()
    yield runtime, server
    runtime.stop()
    server.stop()


def sample(text: str, name: str, labels: str) -> float | None:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def wait_for(runtime: RuntimeProcess, check: Callable[[str], bool], what: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status, text = runtime.get("/metrics")
        assert status == 200
        if check(text):
            return str(text)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout}s:\n{text}\n{runtime.logs()}")
        time.sleep(0.2)


def state(text: str, value: str) -> float | None:
    return sample(text, "strata_mcp_server_state", f'server="web",state="{value}"')


def test_state_and_reconnects_follow_the_server_and_each_change_is_logged(
        setup: tuple[RuntimeProcess, DemoHttpServer]) -> None:
    runtime, server = setup
    up = wait_for(runtime, lambda t: state(t, "connected") == 1.0, "connected")
    assert state(up, "down") == 0.0 and state(up, "connecting") == 0.0
    assert sample(up, "strata_mcp_server_degraded", 'server="web"') == 0.0
    assert (sample(up, "strata_mcp_server_tools", 'server="web"') or 0) >= 3
    assert sample(up, "strata_mcp_server_tools_skipped", 'server="web"') == 0.0
    before = sample(up, "strata_mcp_server_reconnects_total", 'server="web"')
    assert before == 0.0

    server.kill()
    down = wait_for(runtime, lambda t: state(t, "down") == 1.0, "down after the server died")
    assert state(down, "connected") == 0.0
    assert sample(down, "strata_mcp_server_degraded", 'server="web"') == 1.0

    server.start()
    back = wait_for(runtime, lambda t: state(t, "connected") == 1.0, "connected again")
    assert (sample(back, "strata_mcp_server_reconnects_total", 'server="web"') or 0) >= 1
    assert sample(back, "strata_mcp_server_degraded", 'server="web"') == 0.0

    changes = [line for line in runtime.log_path.read_text().splitlines() if "MCP server state changed" in line]
    moves = [(re.search(r'"from": ?"(\w+)"', line), re.search(r'"to": ?"(\w+)"', line)) for line in changes]
    pairs = [(a.group(1), b.group(1)) for a, b in moves if a and b]
    assert pairs == [("connecting", "connected"), ("connected", "down"), ("down", "connected")], changes
