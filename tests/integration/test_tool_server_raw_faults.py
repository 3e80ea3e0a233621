"""Byte-level misbehaviour of HTTP tool servers, from a raw TCP server scripted per case.

`tests/support/tool_server.py` is a polite tool; this one is not (`tests/support/raw_upstream`):
it closes the connection at every point of an answer, truncates and mangles bodies, drips bytes
forever, floods, redirects in loops and to internal addresses, asks to be retried later, and
echoes the secret it was sent. Every call goes through the real app (`POST /internal/tools/call`,
in process) and each case checks what the model would get: the tool's answer when HTTP allows
what the server did, else that call's error with a stable code; never a 500, a hang past the
tool's timeout, an unbounded read or a leaked secret, and the next call of a good tool works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest

from strata_runtime.app import create_app
from strata_runtime.config import RuntimeConfig
from strata_runtime.logs import QUIET_LOGGERS
from tests.support.raw_upstream import CHUNKED_END, RawConnection, RawUpstream, chunk, http_head

pytestmark = pytest.mark.integration

SECRET = "tk-live-5f1c0e7a9b3d4c2e8f6a"
ENV = {"STRATA_INTERNAL_TOKEN": "internal-token-raw", "STRATA_KEY_ACME": "acme-key", "TOOL_SECRET": SECRET,
       "TOOL_MODE": "on"}
INTERNAL = {"x-strata-internal-token": "internal-token-raw"}
LIMIT = 30.0  # seconds: a generous bound on any one call, never a measurement
TIMEOUT = 1.0  # the tools' own timeout (the slow cases must end on it)
CAP = 4096  # the tools' maxResultBytes
BIG_CAP = {"deep_json": 1_000_000}

Handler = Callable[[RawConnection], Awaitable[None]]


def _close(*headers: bytes, status: int = 200, reason: bytes = b"OK") -> bytes:
    return http_head(status, *headers, b"connection: close", reason=reason)


def _json(body: object, status: int = 200, *headers: bytes) -> bytes:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return _close(b"content-type: application/json", b"content-length: %d" % len(data), *headers,
                  status=status) + data


async def _drip_forever(conn: RawConnection) -> None:
    await conn.send(http_head(200, b"content-type: application/json", b"transfer-encoding: chunked"), chunk(b"["))
    while True:  # a byte now and then: every read gets something, the body never ends
        await conn.send(chunk(b" "))
        await asyncio.sleep(0.1)


FLOODS_CUT: asyncio.Queue[str] = asyncio.Queue()  # a flooding case's name once the runtime hung up on it


async def _flood(conn: RawConnection, head: bytes, piece: Callable[[bytes], bytes], name: str) -> None:
    await conn.send(head)
    block = piece(b'"' + b"x" * 65536 + b'",')
    try:
        for _ in range(10_000):  # 650 MB if nobody hangs up; the cap is 4 kB
            conn.writer.write(block)
            await conn.writer.drain()
    except ConnectionError:
        FLOODS_CUT.put_nowait(name)
        raise


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- the cases: path -> what the server does after reading the request ---------------------------

CASES: dict[str, Handler] = {}


def case(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        CASES[name] = handler
        return handler
    return register


def sends(name: str, *pieces: bytes) -> None:
    async def handler(conn: RawConnection) -> None:
        await conn.send(*pieces)
    CASES[name] = handler


sends("ok", _json({"fine": True}))
sends("closed_before_headers", b"")
sends("closed_mid_headers", b"HTTP/1.1 200 OK\r\ncontent-ty")
sends("closed_after_headers", _close(b"content-type: application/json", b"content-length: 40"))
sends("truncated_body", _close(b"content-type: application/json", b"content-length: 40") + b'{"partial": ')
sends("body_longer_than_declared", _close(b"content-type: application/json", b"content-length: 2")
      + b'{}{"extra": "bytes after the declared length"}')
sends("chunked_bad_size", http_head(200, b"content-type: application/json", b"transfer-encoding: chunked")
      + b"zz\r\n{}\r\n" + CHUNKED_END)
sends("chunked_cut", http_head(200, b"content-type: application/json", b"transfer-encoding: chunked")
      + chunk(b'{"a": ') )
sends("chunked_short_chunk", http_head(200, b"content-type: application/json", b"transfer-encoding: chunked")
      + b"40\r\n{}\r\n" + CHUNKED_END)
sends("big_declared", _close(b"content-type: application/json", b"content-length: 1000000000"))
sends("not_json", _json(b"<html>oops</html>"))
sends("json_as_text_plain", _close(b"content-type: text/plain", b"content-length: 11") + b'{"a": true}')
sends("invalid_utf8", _json(b'{"a": "\xff\xfe"}'))
sends("deep_json", _json(_deep(100_000)))  # its tool's cap is raised for it (BIG_CAP)
sends("continue_then_200", b"HTTP/1.1 100 Continue\r\n\r\n", _json({"after": "continue"}))
sends("processing_then_200", b"HTTP/1.1 102 Processing\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n",
      _json({"after": "hints"}))
sends("no_content", _close(status=204, reason=b"No Content"))
sends("not_found", _json({"error": "no such thing"}, 404))
sends("redirect_no_location", _json({"moved": "somewhere"}, 302))
sends("not_modified", _close(status=304, reason=b"Not Modified"))
sends("redirect_bad_port", _close(b"location: http://127.0.0.1:99999/x", b"content-length: 0", status=302))
sends("redirect_bad_url", _close(b"location: http://[::1/x", b"content-length: 0", status=302))
sends("redirect_file", _close(b"location: file:///etc/passwd", b"content-length: 0", status=302))
sends("redirect_metadata", _close(b"location: http://169.254.169.254/latest/meta-data/", b"content-length: 0",
                                  status=307))
sends("redirect_loopback_v6", _close(b"location: http://[::1]:6379/", b"content-length: 0", status=307))
sends("bad_gzip", _close(b"content-type: application/json", b"content-encoding: gzip", b"content-length: 12")
      + b"not gzip at all"[:12])
sends("bad_status_line", b"HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\n{}")
sends("huge_header", http_head(200, b"x-junk: " + b"a" * 200_000, b"content-length: 2") + b"{}")


@case("drip_forever")
async def _drip(conn: RawConnection) -> None:
    await _drip_forever(conn)


@case("flood_declared_none")
async def _flood_none(conn: RawConnection) -> None:
    await _flood(conn, _close(b"content-type: application/json") + b"[", lambda b: b, "flood_declared_none")


@case("flood_chunked")
async def _flood_chunked(conn: RawConnection) -> None:
    await _flood(conn, http_head(200, b"content-type: application/json", b"transfer-encoding: chunked")
                 + chunk(b"["), chunk, "flood_chunked")


@case("redirect_loop")
async def _loop(conn: RawConnection) -> None:
    await conn.send(_close(b"location: /case/redirect_loop", b"content-length: 0", status=302))


@case("echo_secret")
async def _echo_secret(conn: RawConnection) -> None:
    key = (conn.header(b"x-api-key") or b"").decode()
    await conn.send(_json({"you_sent": key, "as_header": f"x-api-key: {key}", "nested": {"k": [key]}}))


@case("echo_secret_400")
async def _echo_secret_400(conn: RawConnection) -> None:
    key = (conn.header(b"x-api-key") or b"").decode()
    await conn.send(_json({"error": f"invalid key {key}"}, 401))


@case("echo_secret_500")
async def _echo_secret_500(conn: RawConnection) -> None:
    key = (conn.header(b"x-api-key") or b"").decode()
    await conn.send(_json(f"upstream exploded with key={key}".encode(), 500))


@case("echo_secret_text")
async def _echo_secret_text(conn: RawConnection) -> None:
    key = (conn.header(b"x-api-key") or b"").decode()
    await conn.send(_json(f"not json but the key {key}".encode()))


@case("redirect_leak")
async def _redirect_leak(conn: RawConnection) -> None:
    key = (conn.header(b"x-api-key") or b"").decode()
    await conn.send(_close(f"location: /case/redirect_leak?k={key}".encode(), b"content-length: 0", status=302))


@case("redirect_to")
async def _redirect_to(conn: RawConnection) -> None:
    query = parse_qs(urlsplit(conn.head.split(b" ", 2)[1].decode()).query)
    await conn.send(_close(b"location: " + query["to"][0].encode(), b"content-length: 0", status=307))


@case("short_header_echo")
async def _short_header_echo(conn: RawConnection) -> None:
    value = (conn.header(b"x-mode") or b"").decode()
    await conn.send(_json({"on": value, "version": "on"}))


@case("query_echo")
async def _query_echo(conn: RawConnection) -> None:
    target = conn.head.split(b" ", 2)[1].decode()
    await conn.send(_json({"query": parse_qs(urlsplit(target).query)}))


def _retry_later(status: int, retry_after: bytes) -> Handler:
    async def handler(conn: RawConnection) -> None:
        seen = conn.upstream.requests
        key = conn.header(b"idempotency-key")
        attempts = sum(1 for head, _ in seen if _header(head, b"idempotency-key") == key)
        if attempts == 1:
            await conn.send(_json({"error": "later"}, status, b"retry-after: " + retry_after))
        else:
            await conn.send(_json({"attempt": attempts}))
    return handler


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


for _status in (429, 503):
    CASES[f"retry_{_status}_soon"] = _retry_later(_status, b"0")
    CASES[f"retry_{_status}_late"] = _retry_later(_status, b"3600")
CASES["retry_503_date"] = _retry_later(503, b"Wed, 21 Oct 2015 07:28:00 GMT")
CASES["retry_503_junk"] = _retry_later(503, b"soon-ish")


@case("always_503")
async def _always_503(conn: RawConnection) -> None:
    await conn.send(_json({"error": "down"}, 503, b"retry-after: 0"))


async def _dispatch(conn: RawConnection) -> None:
    await conn.read_request()
    target = conn.head.split(b" ", 2)[1].decode()
    name = target.split("?", 1)[0].rsplit("/", 1)[-1]
    await CASES[name](conn)


# -- the app -------------------------------------------------------------------------------------

POST_ONLY = {"echo_secret", "echo_secret_400", "echo_secret_500", "echo_secret_text", "redirect_leak"}


def _tools(base: str) -> list[dict[str, Any]]:
    tools = []
    for name in CASES:
        for method in ("POST", "GET"):
            if method == "GET" and name in POST_ONLY:
                continue
            tools.append({
                "id": f"{name}_{method.lower()}", "name": name, "executor": "http", "target": f"{base}/case/{name}",
                "method": method, "allowedAgents": ["support"], "allowHosts": ["127.0.0.1"],
                "timeoutSeconds": TIMEOUT, "maxResultBytes": BIG_CAP.get(name, CAP),
                "headersEnv": {"x-api-key": "TOOL_SECRET"},
            })
    return tools


def _config(workdir: Path, base: str) -> dict[str, Any]:
    tools = _tools(base)
    tools.append({"id": "short_secret_post", "name": "short_secret", "executor": "http",
                  "target": f"{base}/case/short_header_echo", "allowedAgents": ["support"],
                  "allowHosts": ["127.0.0.1"], "headersEnv": {"x-mode": "TOOL_MODE"}})
    tools.append({"id": "fixed_query_get", "name": "fixed_query", "executor": "http", "method": "GET",
                  "target": f"{base}/case/query_echo?format=json&v={{version}}", "allowedAgents": ["support"],
                  "allowHosts": ["127.0.0.1"]})
    return {
        "auth": {"mode": "apiKey", "apiKeys": [{"tenant": "acme", "keyEnv": "STRATA_KEY_ACME"}],
                 "internalTokenEnv": "STRATA_INTERNAL_TOKEN"},
        "stores": {"redis": {"backend": "memory"}, "sql": {"backend": "sqlite", "sqlitePath": str(workdir / "s.db")},
                   "vectors": {"backend": "memory"}},
        "cache": {"enabled": False},
        "memory": {"longTerm": {"enabled": False}},
        "models": [{"name": "demo", "provider": "demo"}],
        "tools": tools,
        "agents": [{"id": "support", "tenant": "acme", "model": "demo", "tools": [t["id"] for t in tools]}],
    }


class Rig:
    def __init__(self, api: httpx.AsyncClient, upstream: RawUpstream):
        self.api = api
        self.upstream = upstream

    async def call(self, tool: str, args: dict[str, Any] | None = None, call_id: str | None = None) -> dict[str, Any]:
        """One call through the app: its JSON answer (HTTP 200 asserted: a tool's fault is never the API's)."""
        body: dict[str, Any] = {"tool_id": tool, "agent_id": "support", "tenant_id": "acme", "args": args or {}}
        if call_id:
            body["context"] = {"call_id": call_id}
        async with asyncio.timeout(LIMIT):
            r = await self.api.post("/internal/tools/call", json=body, headers=INTERNAL)
        assert r.status_code == 200, r.text
        assert SECRET not in r.text
        answer: dict[str, Any] = r.json()
        return answer

    def requests_to(self, name: str) -> int:
        return sum(1 for head, _ in self.upstream.requests if f"/case/{name}".encode() in head.split(b"\r\n")[0])


@pytest.fixture(scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with RawUpstream(_dispatch) as upstream:
        config = RuntimeConfig.model_validate(_config(tmp_path_factory.mktemp("rawtools"),
                                                      f"http://127.0.0.1:{upstream.port}"))
        app = create_app(config, env=ENV)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://strata.test", timeout=60) as client:
                yield Rig(client, upstream)
        assert not upstream.script_errors, upstream.script_errors


@pytest.fixture(autouse=True)
def _no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No log line of the call carries the secret (lines the runtime's logging drops are not lines)."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.get_records("call"):
        if record.levelno < logging.WARNING and record.name.split(".")[0] in QUIET_LOGGERS:
            continue
        text = record.getMessage() + " " + repr(record.__dict__)
        assert SECRET not in text, record


async def _still_usable(rig: Rig) -> None:
    assert (await rig.call("ok_post"))["result"] == {"fine": True}


def _error(answer: dict[str, Any]) -> tuple[str, str]:
    assert answer["ok"] is False, answer
    return answer["error"]["code"], answer["error"]["message"]


# -- the sweep -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "code"), [
    ("closed_before_headers", "unreachable"),
    ("closed_mid_headers", "unreachable"),
    ("closed_after_headers", "unreachable"),
    ("truncated_body", "unreachable"),
    ("chunked_bad_size", "unreachable"),
    ("chunked_cut", "unreachable"),
    ("chunked_short_chunk", "unreachable"),
    ("bad_status_line", "unreachable"),
    ("huge_header", "unreachable"),
    ("bad_gzip", "invalid_result"),
])
@pytest.mark.parametrize("method", ["post", "get"])
async def test_a_broken_answer_fails_that_call_and_only_idempotent_calls_are_retried(
    rig: Rig, name: str, code: str, method: str
) -> None:
    before = rig.requests_to(name)
    got, _ = _error(await rig.call(f"{name}_{method}"))
    assert got == code
    assert rig.requests_to(name) - before == (3 if method == "get" and code == "unreachable" else 1)
    await _still_usable(rig)


@pytest.mark.parametrize("name", ["drip_forever", "flood_declared_none", "flood_chunked", "big_declared"])
@pytest.mark.parametrize("method", ["post", "get"])
async def test_an_answer_that_never_ends_or_outgrows_the_cap_is_cut_and_the_connection_let_go(
    rig: Rig, name: str, method: str
) -> None:
    code, message = _error(await rig.call(f"{name}_{method}"))
    if name == "drip_forever":
        assert code == "timeout" and f"{TIMEOUT:.3g}s" in message
    else:
        assert code == "result_too_large"
    if name.startswith("flood"):  # it stopped reading and hung up: the server's writes failed long before 650 MB
        async with asyncio.timeout(LIMIT):
            assert await FLOODS_CUT.get() == name
    await _still_usable(rig)


@pytest.mark.parametrize(("name", "result"), [
    ("body_longer_than_declared", {}),
    ("json_as_text_plain", {"a": True}),
    ("continue_then_200", {"after": "continue"}),
    ("processing_then_200", {"after": "hints"}),
    ("no_content", None),
])
async def test_what_http_allows_is_the_tools_answer(rig: Rig, name: str, result: Any) -> None:
    answer = await rig.call(f"{name}_post")
    assert answer["ok"] is True and answer["result"] == result, answer
    await _still_usable(rig)


@pytest.mark.parametrize(("name", "code"), [
    ("not_json", "invalid_result"),
    ("invalid_utf8", "invalid_result"),
    ("deep_json", "invalid_result"),
    ("not_found", "upstream_error"),
    ("redirect_no_location", "upstream_error"),
    ("not_modified", "upstream_error"),
    ("redirect_loop", "upstream_error"),
    ("redirect_bad_port", "upstream_error"),
    ("redirect_bad_url", "upstream_error"),
    ("redirect_file", "ssrf_blocked"),
    ("redirect_metadata", "ssrf_blocked"),
    ("redirect_loopback_v6", "ssrf_blocked"),
])
@pytest.mark.parametrize("method", ["post", "get"])
async def test_an_answer_the_tool_contract_refuses_is_that_calls_error(
    rig: Rig, name: str, code: str, method: str
) -> None:
    before = rig.requests_to(name)
    got, message = _error(await rig.call(f"{name}_{method}"))
    assert got == code, message
    if name == "redirect_loop":
        assert rig.requests_to(name) - before == 6  # the first request and 5 redirects, then it stops
    await _still_usable(rig)


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured_for_idempotent_calls_within_their_deadline(rig: Rig, status: int) -> None:
    name = f"retry_{status}_soon"
    answer = await rig.call(f"{name}_get", call_id=f"soon-get-{status}")
    assert answer["ok"] is True and answer["result"] == {"attempt": 2}
    before = rig.requests_to(name)
    code, message = _error(await rig.call(f"{name}_post", call_id=f"soon-post-{status}"))
    assert code == "upstream_error" and str(status) in message
    assert rig.requests_to(name) - before == 1  # not idempotent: never sent twice


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("method", ["post", "get"])
async def test_a_retry_after_beyond_the_deadline_fails_at_once_without_a_retry(
    rig: Rig, status: int, method: str
) -> None:
    name = f"retry_{status}_late"
    before = rig.requests_to(name)
    code, message = _error(await rig.call(f"{name}_{method}", call_id=f"late-{method}-{status}"))
    assert code == "upstream_error" and str(status) in message and "3600" in message
    assert rig.requests_to(name) - before == 1


@pytest.mark.parametrize("name", ["retry_503_date", "retry_503_junk"])
async def test_a_retry_after_that_is_a_date_or_junk_is_a_short_backoff(rig: Rig, name: str) -> None:
    answer = await rig.call(f"{name}_get", call_id=f"{name}-get")
    assert answer["ok"] is True and answer["result"] == {"attempt": 2}


async def test_retries_of_a_server_that_stays_down_are_bounded(rig: Rig) -> None:
    before = rig.requests_to("always_503")
    code, _ = _error(await rig.call("always_503_get"))
    assert code == "upstream_error" and rig.requests_to("always_503") - before == 3
    before = rig.requests_to("always_503")
    code, _ = _error(await rig.call("always_503_post"))
    assert code == "upstream_error" and rig.requests_to("always_503") - before == 1


@pytest.mark.parametrize(("name", "code"), [
    ("echo_secret", None),
    ("echo_secret_400", "upstream_error"),
    ("echo_secret_500", "upstream_error"),
    ("echo_secret_text", "invalid_result"),
    ("redirect_leak", "upstream_error"),
])
async def test_a_tool_echoing_its_secret_never_shows_it_to_the_model_nor_the_logs(
    rig: Rig, name: str, code: str | None
) -> None:
    answer = await rig.call(f"{name}_post")  # asserts the secret is nowhere in the answer (and the fixture: the logs)
    if code is None:
        assert answer["result"] == {"you_sent": "[redacted]", "as_header": "x-api-key: [redacted]",
                                    "nested": {"k": ["[redacted]"]}}
    else:
        assert _error(answer)[0] == code
    if name == "echo_secret_400":
        assert "invalid key [redacted]" in answer["error"]["message"]
    assert any(SECRET.encode() in head for head, _ in rig.upstream.requests)  # it did reach the tool


async def test_a_redirect_to_another_origin_does_not_carry_the_tools_secret_headers(rig: Rig) -> None:
    async def landing(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(_json({"key": (conn.header(b"x-api-key") or b"").decode(),
                               "idempotency": (conn.header(b"idempotency-key") or b"").decode()}))

    async with RawUpstream(landing) as other:  # 127.0.0.1 too (allowed), another port: another origin
        answer = await rig.call("redirect_to_get", {"to": f"http://127.0.0.1:{other.port}/landing"},
                                call_id="away-1")
        assert answer["ok"] is True and answer["result"] == {"key": "", "idempotency": "away-1"}
        assert not other.script_errors
    same = await rig.call("redirect_to_get", {"to": "/case/echo_secret"})  # same origin: the secret goes along
    assert same["ok"] is True and same["result"]["you_sent"] == "[redacted]"


async def test_a_get_tools_arguments_join_the_query_its_url_has(rig: Rig) -> None:
    answer = await rig.call("fixed_query_get", {"version": "2", "q": "weather", "n": 3})
    assert answer["result"] == {"query": {"format": ["json"], "v": ["2"], "q": ["weather"], "n": ["3"]}}


async def test_a_short_header_value_is_not_taken_for_a_secret_and_the_answer_stays_whole(rig: Rig) -> None:
    answer = await rig.call("short_secret_post")
    assert answer["ok"] is True and answer["result"] == {"on": "on", "version": "on"}
