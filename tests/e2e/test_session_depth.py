"""Session depth across two runtime processes sharing Redis: any pod answers for the deployment."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import memory_runtime_config, services_env
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess

pytestmark = pytest.mark.e2e

WINDOW = 4  # seconds a session still counts after its last turn


@pytest.fixture
def two_pods(tmp_path: Path, openai_upstream: UpstreamServer) -> Iterator[tuple[RuntimeProcess, RuntimeProcess]]:
    redis_url, _ = services_env()
    config = memory_runtime_config(tmp_path, openai_upstream, redis_url=redis_url,
                                   prefix=f"depth{uuid.uuid4().hex[:8]}")
    config["server"] = {"sessionDepthWindowSeconds": WINDOW}
    env = {"STRATA_TEST_UPSTREAM_KEY": "k"}
    pods = [RuntimeProcess(config, tmp_path, env=env).start() for _ in range(2)]
    try:
        yield pods[0], pods[1]
    finally:
        for pod in pods:
            pod.stop()


def _eventually(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: never true within {timeout}s (last {last!r})")


def _depth(pod: RuntimeProcess) -> dict[str, Any]:
    status, body = pod.get("/metrics/session-depth")
    assert status == 200, body
    return dict(body)


def _gauge(pod: RuntimeProcess, name: str) -> float | None:
    status, text = pod.get("/metrics")
    assert status == 200
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_depth_counts_turns_in_flight_on_every_pod_once_and_ages_out(
        two_pods: tuple[RuntimeProcess, RuntimeProcess], openai_upstream: UpstreamServer) -> None:
    a, b = two_pods
    assert _depth(a)["sessionDepth"] == 0 and _depth(a)["scope"] == "deployment"
    openai_upstream.control(chunk_delay_ms=500)  # each answer streams for a few seconds
    results: list[int] = []

    def turn(pod: RuntimeProcess, sid: str) -> None:
        status, _ = pod.request("POST", "/api/v1/query", {"message": "one two three four five six",
                                                          "session_id": sid, "chatbot_id": "support"})
        results.append(status)

    threads = [threading.Thread(target=turn, args=(pod, f"s{i}"), daemon=True)
               for i, pod in enumerate([a, a, a, b, b])]
    for t in threads:
        t.start()
    # While the five turns run (three on a, two on b), both pods report the same deployment-wide 5.
    _eventually(lambda: _depth(a)["sessionDepth"] == 5 and _depth(b)["sessionDepth"] == 5, "depth 5 on both pods")
    in_flight = _depth(a)["pod"]["turnsInFlight"], _depth(b)["pod"]["turnsInFlight"]
    assert in_flight[0] <= 3 and in_flight[1] <= 2 and sum(in_flight) >= 1
    assert _gauge(b, "strata_session_depth") == 5
    for t in threads:
        t.join(60)
    assert results == [200] * 5
    # The last turn ended: the sessions still count for the window, then age out on both pods.
    _eventually(lambda: _depth(a)["sessionDepth"] == 0 and _depth(b)["sessionDepth"] == 0, "depth back to 0",
                timeout=WINDOW * 5)
    assert _gauge(a, "strata_session_depth") == 0
    assert _gauge(a, "strata_turns_in_flight") == 0
