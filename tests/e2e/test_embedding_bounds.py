"""`/v1/embeddings` on the local model against a real runtime process: bounded per request and per pod.

A request over the token cap is a 413 before any work; a large request is cut into batches so
another tenant's small request is answered while it is still running; the work queue refuses
what would exceed its bound (503 + Retry-After) and a request past its deadline is a 503.
Sizes are small so the tests run in seconds; the assertions are on order and counts, not time.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import GATEWAY_ENV, gateway_config
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess

ACME = {"authorization": f"Bearer {GATEWAY_ENV['STRATA_KEY_ACME']}"}
GLOBEX = {"authorization": f"Bearer {GATEWAY_ENV['STRATA_KEY_GLOBEX']}"}
MODEL = "all-MiniLM-L6-v2"
LARGE = 512  # inputs of the long-running request: 64 batches of 8
LIMITS = {"maxTokensPerRequest": 20_000, "batchInputs": 8, "concurrentBatches": 1,
          "maxQueuedInputs": LARGE + 64, "deadlineSeconds": 120}


def start(tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer,
          limits: dict[str, Any]) -> RuntimeProcess:
    workdir: Path = tmp_path_factory.mktemp("embeddings")
    config = gateway_config(workdir, upstream.base_url, server={"limits": {"embeddings": limits}},
                            embedder={"provider": "local", "model": MODEL, "timeoutSeconds": 60})
    return RuntimeProcess(config, workdir, env=GATEWAY_ENV).start(timeout=90)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory,
            openai_upstream_session: UpstreamServer) -> Iterator[RuntimeProcess]:
    process = start(tmp_path_factory, openai_upstream_session, LIMITS)
    yield process
    process.stop()


def inputs(n: int, words: int = 6) -> list[str]:
    return [" ".join(["a short question"] + [f"w{i}"] * (words - 3)) for i in range(n)]


def embed(runtime: RuntimeProcess, auth: dict[str, str], texts: list[str]) -> httpx.Response:
    with httpx.Client(base_url=runtime.base_url, timeout=120) as client:
        return client.post("/v1/embeddings", json={"model": MODEL, "input": texts}, headers=auth)


def send_raw(runtime: RuntimeProcess, auth: dict[str, str], texts: list[str]) -> socket.socket:
    """Send an embeddings request on a raw socket and return without reading the answer."""
    body = json.dumps({"model": MODEL, "input": texts}).encode()
    sock = socket.create_connection(("127.0.0.1", runtime.port), timeout=120)
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: strata\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nAuthorization: " + auth["authorization"].encode() + b"\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return sock


def answered(sock: socket.socket) -> bool:
    """Whether the server has started answering on `sock` (without waiting)."""
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


def read_status(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_over_the_token_cap_is_413_before_any_work(runtime: RuntimeProcess) -> None:
    texts = [" ".join(f"long{j}" for j in range(200)) for _ in range(2048)]  # ~1.3 M bytes, ~460 k tokens
    response = embed(runtime, ACME, texts)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "payload_too_large" and error["field"] == "input"
    assert error["details"]["limit_tokens"] == LIMITS["maxTokensPerRequest"]
    assert embed(runtime, ACME, ["still answering"]).status_code == 200


def test_a_large_request_is_batched_and_another_tenant_is_served_meanwhile(runtime: RuntimeProcess) -> None:
    large = send_raw(runtime, ACME, inputs(LARGE))
    try:
        small = embed(runtime, GLOBEX, ["is anyone there"])
        assert small.status_code == 200, small.text
        assert len(small.json()["data"]) == 1
        assert not answered(large)  # globex had its answer while acme's request was still running

        # Another large request does not fit in the queue next to it: refused at once, not queued.
        refused = embed(runtime, GLOBEX, inputs(LARGE))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "embedder_busy"
        assert refused.headers["retry-after"] == "1"
        assert not answered(large)

        status, body = read_status(large)
    finally:
        large.close()
    assert status == 200, body
    vectors = body["data"]
    assert [v["index"] for v in vectors] == list(range(LARGE)) and len(vectors[0]["embedding"]) == 384
    # The same text embeds to the same vector whichever batch it was in.
    alone = embed(runtime, ACME, inputs(LARGE)[-1:]).json()["data"][0]["embedding"]
    assert max(abs(a - b) for a, b in zip(alone, vectors[-1]["embedding"], strict=True)) < 1e-4


def test_the_queue_is_empty_again_after_refusals_and_successes(runtime: RuntimeProcess) -> None:
    # A request of exactly the queue bound fits only when nothing else is queued.
    response = embed(runtime, ACME, inputs(LIMITS["maxQueuedInputs"]))
    assert response.status_code == 200, response.text


def test_a_request_past_its_deadline_is_503(tmp_path_factory: pytest.TempPathFactory,
                                            openai_upstream_session: UpstreamServer) -> None:
    process = start(tmp_path_factory, openai_upstream_session, {**LIMITS, "deadlineSeconds": 0.2})
    try:
        response = embed(process, ACME, inputs(LARGE, words=20))
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "embedder_deadline"
        assert process.get("/healthz")[0] == 200
    finally:
        process.stop()
