"""SIGTERM during a 5-second stream: the stream finishes intact, readiness drops, the process exits 0."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from pathlib import Path

import orjson

from tests.e2e.conftest import GATEWAY_ENV, StartRuntime, gateway_config
from tests.support.fixtures import UpstreamServer


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
