"""Hostile clients against a real runtime process: what only a real server and real sockets show.

Slow or oversized request heads, bodies that are huge or never finish, and one tenant holding
many streams. Every bound here is set small in the config so the tests run in seconds; the
waits are generous upper bounds (never timing asserts), and counts are what is checked.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import GATEWAY_ENV, gateway_config
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess

ACME = {"authorization": f"Bearer {GATEWAY_ENV['STRATA_KEY_ACME']}"}
GLOBEX = {"authorization": f"Bearer {GATEWAY_ENV['STRATA_KEY_GLOBEX']}"}
STREAMS_PER_TENANT = 4
LIMITS = {"headTimeoutSeconds": 1, "bodyTimeoutSeconds": 1, "maxHeadBytes": 8192, "maxHeaders": 40,
          "perTenant": {"requests": 16, "streams": STREAMS_PER_TENANT}}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory,
            openai_upstream_session: UpstreamServer) -> Iterator[RuntimeProcess]:
    workdir: Path = tmp_path_factory.mktemp("hostile")
    config = gateway_config(workdir, openai_upstream_session.base_url, server={"limits": LIMITS, "drainSeconds": 5})
    process = RuntimeProcess(config, workdir, env=GATEWAY_ENV)
    process.start(timeout=90)
    yield process
    process.stop()


def connect(runtime: RuntimeProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", runtime.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket, timeout: float = 15.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one answer on `sock` (read until the server closes)."""
    sock.settimeout(timeout)
    raw = b""
    try:
        while chunk := sock.recv(65536):
            raw += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines[0].startswith("HTTP/") else 0
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return status, {k.lower(): v for k, v in headers.items()}, body


def rss_bytes(runtime: RuntimeProcess) -> int:
    assert runtime.process is not None
    status = Path(f"/proc/{runtime.process.pid}/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return kib * 1024


def error_code(body: bytes) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


# -- the request head ------------------------------------------------------------------------------

def test_incomplete_heads_are_answered_408_and_closed(runtime: RuntimeProcess) -> None:
    """Slowloris: 100 connections that never finish their head, some still trickling bytes."""
    sockets = [connect(runtime) for _ in range(100)]
    for sock in sockets:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: strata\r\nX-Slow: ")
    trickling = sockets[:10]
    deadline = time.monotonic() + 3  # keep a few sending a byte at a time past the head timeout
    while time.monotonic() < deadline:
        for sock in trickling:
            with contextlib.suppress(OSError):
                sock.sendall(b"a")
        time.sleep(0.2)
    answers = [read_answer(sock) for sock in sockets]
    for sock in sockets:
        sock.close()
    assert [status for status, _, _ in answers] == [408] * 100
    assert {error_code(body) for _, _, body in answers} == {"request_timeout"}
    assert runtime.get("/healthz")[0] == 200


def test_a_kept_alive_connection_cannot_trickle_its_second_head(runtime: RuntimeProcess) -> None:
    sock = connect(runtime)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: strata\r\n\r\nGET /healthz HTTP/1.1\r\nHost: st")
    status, _, body = read_answer(sock)
    sock.close()
    assert status == 200
    assert b"request_timeout" in body  # the second, unfinished head was answered 408


@pytest.mark.parametrize("head", [
    b"GET /healthz HTTP/1.1\r\nHost: strata\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n",
    b"GET /healthz?" + b"q" * 10_000 + b" HTTP/1.1\r\nHost: strata\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: strata\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(60)) + b"\r\n",
])
def test_a_head_over_the_size_or_header_count_is_431(runtime: RuntimeProcess, head: bytes) -> None:
    sock = connect(runtime)
    sock.sendall(head)
    status, headers, body = read_answer(sock)
    sock.close()
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert error_code(body) == "request_header_fields_too_large"


def test_a_malformed_head_is_a_json_400(runtime: RuntimeProcess) -> None:
    sock = connect(runtime)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost strata\r\n\r\n")
    status, _, body = read_answer(sock)
    sock.close()
    assert status == 400 and error_code(body) == "bad_request"


# -- the body -----------------------------------------------------------------------------------

def send_body(sock: socket.socket, total: int, piece: int = MIB) -> int:
    """Send up to `total` bytes; returns how many the server took before it stopped reading."""
    sent = 0
    chunk = b"x" * piece
    sock.settimeout(5)
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += piece
    except OSError:  # reset or closed by the server, or it stopped reading (timeout)
        pass
    return sent


@pytest.mark.parametrize(("path", "declared"), [("/api/v1/query", True), ("/api/v1/query", False),
                                                ("/v1/chat/completions", True),
                                                ("/internal/agent-memory/store", True)])
def test_an_unauthenticated_300_mb_body_is_refused_without_being_read(runtime: RuntimeProcess, path: str,
                                                                      declared: bool) -> None:
    before = rss_bytes(runtime)
    size = 300 * MIB
    sock = connect(runtime)
    length = f"Content-Length: {size}\r\n" if declared else "Transfer-Encoding: chunked\r\n"
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: strata\r\nContent-Type: application/json\r\n{length}\r\n".encode())
    if declared:
        sent = send_body(sock, size)
    else:
        sent = 0
        piece = b"%x\r\n" % MIB + b"x" * MIB + b"\r\n"
        sock.settimeout(5)
        try:
            while sent < size:
                sock.sendall(piece)
                sent += MIB
        except OSError:
            pass
    status, headers, body = read_answer(sock)
    sock.close()
    grown = rss_bytes(runtime) - before
    assert status in (401, 413), body
    assert headers.get("connection") == "close"
    assert sent < size  # the server stopped taking bytes long before the end
    assert grown < 100 * MIB, f"RSS grew by {grown / MIB:.0f} MiB"


def test_an_authenticated_oversized_chunked_body_is_cut_off_at_the_limit(runtime: RuntimeProcess) -> None:
    before = rss_bytes(runtime)
    sock = connect(runtime)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: strata\r\nContent-Type: application/json\r\n"
                 b"Authorization: " + ACME["authorization"].encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    sent = 0
    piece = b"%x\r\n" % MIB + b"x" * MIB + b"\r\n"
    sock.settimeout(5)
    try:
        while sent < 300 * MIB:
            sock.sendall(piece)
            sent += MIB
    except OSError:
        pass
    status, _, body = read_answer(sock)
    sock.close()
    assert status == 413 and error_code(body) == "payload_too_large"
    assert sent < 300 * MIB
    assert rss_bytes(runtime) - before < 100 * MIB


def test_a_body_that_stalls_is_408(runtime: RuntimeProcess) -> None:
    sock = connect(runtime)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: strata\r\nContent-Type: application/json\r\n"
                 b"Authorization: " + ACME["authorization"].encode() + b"\r\nContent-Length: 100\r\n\r\n{\"mod")
    status, headers, body = read_answer(sock)
    sock.close()
    assert status == 408 and error_code(body) == "request_timeout"
    assert headers.get("connection") == "close"


# -- fairness: one tenant's streams -------------------------------------------------------------

def open_stream(runtime: RuntimeProcess, auth: dict[str, str], text: str) -> tuple[socket.socket, int, bytes]:
    """Start a streamed chat on a raw socket; returns it with the status and the first bytes."""
    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": text}]}).encode()
    sock = connect(runtime)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: strata\r\nContent-Type: application/json\r\n"
                 b"Authorization: " + auth["authorization"].encode() + b"\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    sock.settimeout(15)
    raw = b""
    while b"\r\n\r\n" not in raw or (raw.startswith(b"HTTP/1.1 200") and b"data: " not in raw):
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
    return sock, status, raw


def test_one_tenant_with_many_streams_leaves_room_for_another(runtime: RuntimeProcess,
                                                               openai_upstream: UpstreamServer) -> None:
    words = " ".join(f"w{i}" for i in range(200))
    openai_upstream.control(chunk_delay_ms=100)  # each stream lasts ~20 s unless its client leaves
    acme = [open_stream(runtime, ACME, words) for _ in range(3 * STREAMS_PER_TENANT)]
    statuses = [status for _, status, _ in acme]
    assert statuses.count(200) == STREAMS_PER_TENANT and statuses.count(429) == 2 * STREAMS_PER_TENANT, statuses
    assert all(b"data: " in raw for _, status, raw in acme if status == 200)  # they are streaming

    other, status, raw = open_stream(runtime, GLOBEX, words)
    assert status == 200 and b"data: " in raw  # another tenant gets its first bytes at once
    other.close()

    for sock, _, _ in acme:  # the clients leave mid-stream: their slots must come back
        sock.close()
    deadline = time.monotonic() + 20
    while True:
        again = [open_stream(runtime, ACME, words) for _ in range(STREAMS_PER_TENANT)]
        admitted = [status for _, status, _ in again].count(200)
        for sock, _, _ in again:
            sock.close()
        if admitted == STREAMS_PER_TENANT or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert admitted == STREAMS_PER_TENANT



def test_256_streams_of_one_tenant_at_the_default_bounds_leave_another_tenant_served(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    """The default per-tenant bound (64 streams) below a small upstream pool (96 connections):
    without the bound, 256 streams of acme would hold every connection and globex would wait."""
    config = gateway_config(tmp_path, openai_upstream.base_url)
    config["models"][0]["maxConnections"] = 96
    process = RuntimeProcess(config, tmp_path, env=GATEWAY_ENV).start(timeout=90)
    try:
        bound = 64  # TenantConcurrency's default
        words = " ".join(f"w{i}" for i in range(400))
        openai_upstream.control(chunk_delay_ms=100)  # each stream lasts ~40 s unless its client leaves
        acme = [open_stream(process, ACME, words) for _ in range(256)]
        statuses = [status for _, status, _ in acme]
        assert statuses.count(200) == bound and statuses.count(429) == 256 - bound, sorted(set(statuses))
        other, status, raw = open_stream(process, GLOBEX, words)
        assert status == 200 and b"data: " in raw
        other.close()
        for sock, _, _ in acme:
            sock.close()
        deadline = time.monotonic() + 30
        while True:  # every slot comes back once the upstream calls of the closed streams are cancelled
            again = [open_stream(process, ACME, words) for _ in range(bound)]
            admitted = [s for _, s, _ in again].count(200)
            for sock, _, _ in again:
                sock.close()
            if admitted == bound or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert admitted == bound
    finally:
        process.stop()
