"""SIGTERM during a 5-second stream: the stream finishes intact, readiness drops, the process exits 0.
Requests still arriving after SIGTERM, over kept-alive or new connections, are answered with
`Connection: close` (not refused, not dropped); streams in flight then finish."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.e2e.conftest import GATEWAY_ENV, StartRuntime, gateway_config
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import embedded_config


def _stream(port: int, out: list[bytes], done: threading.Event) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "one two three four five six seven eight nine"}]}
    conn.request("POST", "/v1/chat/completions", body=orjson.dumps(body),
                 headers={"authorization": f"Bearer {GATEWAY_ENV['STRATA_KEY_ACME']}",
                          "content-type": "application/json",
                          "x-upstream-chunk-delay-ms": "400"})
    resp = conn.getresponse()
    out.append(str(resp.status).encode())
    while chunk := resp.read1(65536):
        out.append(chunk)
    done.set()


def test_sigterm_mid_stream_lets_the_stream_finish_and_exits_zero(tmp_path: Path, start_runtime: StartRuntime,
                                                                  openai_upstream: UpstreamServer) -> None:
    # 12 events x 400 ms: about 5 seconds of stream.
    openai_upstream.control(chunk_delay_ms=400)
    runtime = start_runtime(gateway_config(tmp_path, openai_upstream.base_url), env=GATEWAY_ENV)
    received: list[bytes] = []
    done = threading.Event()
    reader = threading.Thread(target=_stream, args=(runtime.port, received, done), daemon=True)
    reader.start()
    deadline = time.monotonic() + 10
    while b"".join(received[1:]).count(b"data:") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"".join(received[1:]).count(b"data:") >= 2, "the stream never started"

    runtime.signal(signal.SIGTERM)
    assert runtime.process is not None
    assert done.wait(20), "the stream did not finish"
    exit_code = runtime.process.wait(20)

    body = b"".join(received[1:])
    assert received[0] == b"200"
    events = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: one two three four five six seven eight nine"
    assert chunks[-1]["usage"]["completion_tokens"] == 10
    assert exit_code == 0


def _ready_status(port: int) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/readyz")
        return conn.getresponse().status
    except OSError:
        return None  # the listener is closed: a kubelet probe fails the same way


def test_readiness_is_lost_as_soon_as_sigterm_arrives_while_a_stream_drains(
        tmp_path: Path, start_runtime: StartRuntime, openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(chunk_delay_ms=300)
    runtime = start_runtime(gateway_config(tmp_path, openai_upstream.base_url), env=GATEWAY_ENV)
    assert _ready_status(runtime.port) == 200
    done = threading.Event()
    reader = threading.Thread(target=_stream, args=(runtime.port, [], done), daemon=True)
    reader.start()
    time.sleep(0.5)
    runtime.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert not done.is_set(), "the stream should still be draining"
    assert _ready_status(runtime.port) != 200
    assert done.wait(20)
    assert runtime.process is not None and runtime.process.wait(20) == 0


# -- requests still arriving over kept-alive connections after SIGTERM ------------------------------
# Through a Kubernetes Service a kept-alive connection stays pinned to its pod after the pod left the
# endpoints: the runtime must answer what still comes over it (not 503 it, not drop the connection
# under a request), saying `Connection: close` so the client's next request goes to another pod.

DRAIN_WINDOW = {"drainSeconds": 20, "keepAliveDrainSeconds": 6}
QUERY_HEADERS = {"content-type": "application/json"}


def _query_config(tmp_path: Path, upstream: UpstreamServer) -> dict[str, Any]:
    return embedded_config(
        tmp_path, server=DRAIN_WINDOW, cache={"enabled": False},
        models=[{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream.base_url,
                 "apiKeyEnv": "UPSTREAM_KEY", "maxRetries": 0}],
        agents=[{"id": "support", "tenant": "local", "model": "gpt-4o-mini"}])


def _query(conn: http.client.HTTPConnection, session_id: str, message: str,
           stream: bool = False) -> http.client.HTTPResponse:
    body = {"message": message, "session_id": session_id, "chatbot_id": "support", "stream": stream}
    conn.request("POST", "/api/v1/query", body=orjson.dumps(body), headers=QUERY_HEADERS)
    return conn.getresponse()


def _wait_not_ready(port: int) -> None:
    """Until readiness is lost, asked on new connections: the listener is still open meanwhile."""
    deadline = time.monotonic() + 15
    while _ready_status(port) == 200:
        assert time.monotonic() < deadline, "readiness never dropped after SIGTERM"
        time.sleep(0.05)


@dataclass
class KeptAliveClient:
    """One client on one kept-alive connection, sending turns back to back until the runtime says
    `Connection: close` (where a client behind a Service would reconnect to another pod)."""

    port: int
    name: str
    answered: int = 0
    answered_with_close: int = 0
    failures: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        n = 0
        while not stop.is_set():
            n += 1
            try:
                resp = _query(conn, self.name, f"{self.name} message {n}")
                body = resp.read()
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"{type(e).__name__}: {e}")
                return
            if resp.status != 200:
                self.failures.append(f"{resp.status} {body[:200]!r}")
                return
            self.answered += 1
            if (resp.getheader("connection") or "").lower() == "close":
                self.answered_with_close += 1
                return


def test_sigterm_keeps_answering_kept_alive_clients_with_connection_close(
        tmp_path: Path, start_runtime: StartRuntime, openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(chunk_delay_ms=20)
    runtime = start_runtime(_query_config(tmp_path, openai_upstream), env={"UPSTREAM_KEY": "k"})
    # An idle kept-alive connection from before SIGTERM (the old drain closed it under the next request).
    idle = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=30)
    first = _query(idle, "idle-client", "before the signal")
    assert first.status == 200, first.read()
    first.read()
    assert (first.getheader("connection") or "").lower() != "close"
    stop = threading.Event()
    clients = [KeptAliveClient(runtime.port, f"busy-{i}") for i in range(6)]
    threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert all(c.answered for c in clients), [c.failures for c in clients]

    runtime.signal(signal.SIGTERM)
    _wait_not_ready(runtime.port)
    late = _query(idle, "idle-client", "after the signal")  # a new turn on the connection idle since before
    late_body = late.read()
    for t in threads:
        t.join(20)
    stop.set()
    assert runtime.process is not None and runtime.process.wait(30) == 0, runtime.logs()

    assert late.status == 200, late_body
    assert orjson.loads(late_body)["message"] == "echo: after the signal"
    assert (late.getheader("connection") or "").lower() == "close"
    assert [c.failures for c in clients] == [[]] * len(clients)
    assert [c.answered_with_close for c in clients] == [1] * len(clients), "every client was told to reconnect"


def test_a_stream_in_flight_at_sigterm_finishes_and_a_new_one_is_still_served(
        tmp_path: Path, start_runtime: StartRuntime, openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(chunk_delay_ms=250)  # 6 chunks: ~1.5 s per answer
    runtime = start_runtime(_query_config(tmp_path, openai_upstream), env={"UPSTREAM_KEY": "k"})
    before = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=30)
    in_flight = _query(before, "stream-before", "one two three four five", stream=True)
    assert in_flight.status == 200
    head = in_flight.read1(65536)
    assert b"event: start" in head

    runtime.signal(signal.SIGTERM)
    _wait_not_ready(runtime.port)
    during = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=30)  # the listener is still open
    started_during = _query(during, "stream-during", "six seven eight nine ten", stream=True)
    body_during = started_during.read()
    body_before = head + in_flight.read()
    assert runtime.process is not None and runtime.process.wait(30) == 0, runtime.logs()

    for body, words in ((body_before, "one two three four five"), (body_during, "six seven eight nine ten")):
        events = [line for line in body.decode().split("\n") if line.startswith("event: ")]
        assert events[0] == "event: start" and events[-1] == "event: done", body
        done = orjson.loads(body.decode().rsplit("data: ", 1)[1])
        assert done["message"] == f"echo: {words}", body
    assert (started_during.getheader("connection") or "").lower() == "close"
