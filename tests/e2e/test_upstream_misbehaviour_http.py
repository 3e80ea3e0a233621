"""Misbehaving upstreams seen from outside a runtime process: what an OpenAI client reads.

A raw TCP upstream (`tests/support/raw_upstream.py`, on a thread of its own) answers each
upstream model name with one misbehaviour; the runtime process relays it over real HTTP, with
the exact cache on. The client must get a whole answer where the protocol allows what the
upstream did, an SSE `error` event (and no `[DONE]`) or an error status otherwise, and never
the upstream API key: not in the response, not in a cached replay, not in the runtime's log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.conftest import GATEWAY_ENV, gateway_config
from tests.e2e.test_cache_through_gateway import sse_events
from tests.support.raw_upstream import (
    CHUNKED_END,
    DONE,
    SSE_CHUNKED_HEAD,
    RawConnection,
    chunk,
    completion,
    delta_event,
    json_answer,
    raw_upstream_thread,
)
from tests.support.runtime_process import RuntimeProcess

ACME = {"authorization": f"Bearer {GATEWAY_ENV['STRATA_KEY_ACME']}"}
INTERNAL = {"x-strata-internal-token": GATEWAY_ENV["STRATA_INTERNAL_TOKEN"]}
KEY = "sk-proj-e2eQ7wX2mN9pL4kR8tY6vB3cZ1aS5dF0gH"
ENV = {**GATEWAY_ENV, "UPSTREAM_KEY": KEY}
BEHAVIOURS = ("echo-key-stream", "echo-key", "echo-key-events", "echo-key-escaped", "bad-event",
              "dropped-after-finish", "hang", "html")


def _escaped(text: str, at: int) -> bytes:
    """`text` inside a JSON string, its character `at` as a \\uXXXX escape."""
    return orjson.dumps(text[:at])[1:-1] + f"\\u{ord(text[at]):04x}".encode() + orjson.dumps(text[at + 1:])[1:-1]


def _content_event(text: bytes) -> bytes:
    return delta_event("@").replace(b'"content":"@"', b'"content":"' + text + b'"')


async def _script(conn: RawConnection) -> None:
    while True:
        await conn.read_request()
        behaviour = str(conn.request_json().get("model"))
        auth = (conn.header(b"authorization") or b"").decode()
        if behaviour == "echo-key-stream":  # the key split across two TCP reads inside one event
            event = delta_event(f"your header was {auth}")
            cut = event.index(KEY.encode()) + 9
            await conn.send(SSE_CHUNKED_HEAD, chunk(delta_event("", role="assistant")), chunk(event[:cut]),
                            chunk(event[cut:]), chunk(delta_event(finish="stop")), chunk(DONE), CHUNKED_END)
        elif behaviour == "echo-key":
            await conn.send(json_answer(completion(f"debug: {auth}")))
        elif behaviour == "echo-key-events":  # cut between two deltas, escaped either side of the cut
            said, cut = f"your header was {auth}", len("your header was Bearer ") + 11
            await conn.send(SSE_CHUNKED_HEAD, chunk(delta_event("", role="assistant")),
                            chunk(_content_event(_escaped(said[:cut], cut - 1))),
                            chunk(_content_event(_escaped(said[cut:], 0))),
                            chunk(delta_event(finish="stop")), chunk(DONE), CHUNKED_END)
        elif behaviour == "echo-key-escaped":
            said = f"debug: {auth}"
            body = orjson.dumps(completion("@")).replace(b'"@"', b'"' + _escaped(said, said.index(KEY) + 5) + b'"')
            await conn.send(json_answer(body))
        elif behaviour == "bad-event":
            await conn.send(SSE_CHUNKED_HEAD, chunk(delta_event("", role="assistant")), chunk(delta_event("par")),
                            chunk(b'data: {"choices": [{"index": 0, "delta": "tial"}]}\n\n'), chunk(DONE),
                            CHUNKED_END)
        elif behaviour == "dropped-after-finish":
            await conn.send(SSE_CHUNKED_HEAD, chunk(delta_event("", role="assistant")), chunk(delta_event("whole")),
                            chunk(delta_event(finish="stop")))
            return  # no [DONE], no last chunk: the connection drops
        elif behaviour == "hang":
            await conn.wait_peer_close(60)
            return
        else:
            page = b"<html><body>502 Bad Gateway</body></html>"
            await conn.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: %d\r\n\r\n%b"
                            % (len(page), page))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    workdir: Path = tmp_path_factory.mktemp("misbehaviour")
    with raw_upstream_thread(_script) as upstream:
        models = [{"name": b, "provider": "openai", "upstreamModel": b, "baseUrl": upstream.base_url,
                   "apiKeyEnv": "UPSTREAM_KEY", "maxRetries": 0, "timeoutSeconds": 1 if b == "hang" else 30}
                  for b in BEHAVIOURS]
        config = gateway_config(workdir, upstream.base_url, models=models, agents=[],
                                cache={"enabled": True, "backend": "memory",
                                       "exact": {"enabled": True, "ttlSeconds": 600}, "semantic": {"enabled": False}})
        process = RuntimeProcess(config, workdir, env=ENV)
        process.start(timeout=90)
        try:
            yield process
        finally:
            process.stop()


@pytest.fixture
def client(runtime: RuntimeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=runtime.base_url, timeout=30) as http:
        yield http


def _post(http: httpx.Client, model: str, *, stream: bool, text: str = "hi") -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0,
                            "stream": stream}
    return http.post("/v1/chat/completions", json=body, headers=ACME)


def _leaks(text: str) -> bool:
    return any(KEY[i:i + 12] in text for i in range(len(KEY) - 12))


def _stored(http: httpx.Client, at_least: int) -> None:
    deadline = time.monotonic() + 10  # a limit for the write-behind store, not a measurement
    while http.get("/internal/cache/stats", headers=INTERNAL).json()["stores"] < at_least:
        assert time.monotonic() < deadline, "the answer was never stored"
        time.sleep(0.05)


def _answered_then_replayed(client: httpx.Client, model: str, stream: bool) -> tuple[httpx.Response, httpx.Response]:
    """The upstream's answer (a cache miss, then stored) and the same request again, replayed from the cache."""
    stores = client.get("/internal/cache/stats", headers=INTERNAL).json()["stores"]
    first = _post(client, model, stream=stream)
    assert first.status_code == 200 and first.headers["x-strata-cache"] == "miss"
    _stored(client, stores + 1)
    second = _post(client, model, stream=stream)
    assert second.headers["x-strata-cache"] == "hit_exact"
    return first, second


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "buffered"])
def test_an_echoed_api_key_reaches_neither_the_client_nor_the_cache_nor_the_log(
        client: httpx.Client, runtime: RuntimeProcess, stream: bool) -> None:
    model = "echo-key-stream" if stream else "echo-key"
    for response in _answered_then_replayed(client, model, stream):
        assert "Bearer [redacted]" in response.text
        assert not _leaks(response.text), response.text
    usage = client.get("/api/v1/usage", headers=ACME)
    assert usage.status_code == 200 and not _leaks(usage.text)
    assert not _leaks(runtime.log_path.read_text(errors="replace"))


@pytest.mark.parametrize("stream", [True, False], ids=["stream-cut-between-events", "buffered-escaped"])
def test_a_key_cut_between_events_or_escaped_reaches_neither_the_client_nor_the_cache_nor_the_log(
        client: httpx.Client, runtime: RuntimeProcess, stream: bool) -> None:
    model = "echo-key-events" if stream else "echo-key-escaped"
    for response in _answered_then_replayed(client, model, stream):
        if stream:
            events = sse_events(response)
            text = "".join((e["choices"][0]["delta"].get("content") or "") for e in events[:-1] if e.get("choices"))
            assert text == "your header was Bearer [redacted]"
        else:
            assert response.json()["choices"][0]["message"]["content"] == "debug: Bearer [redacted]"
        assert not _leaks(response.text), response.text
    assert not _leaks(runtime.log_path.read_text(errors="replace"))


def test_a_malformed_event_mid_stream_is_an_error_event_and_no_done(client: httpx.Client) -> None:
    response = _post(client, "bad-event", stream=True)
    assert response.status_code == 200  # the first bytes were sent before the bad event came
    events = sse_events(response)
    assert "[DONE]" not in events
    assert [(e.get("choices") or [{}])[0].get("delta", {}).get("content") for e in events[:-1]] == ["", "par"]
    error = events[-1]["error"]
    assert error["code"] == "upstream_error" and "malformed" in error["message"]


def test_a_stream_dropped_after_its_finish_reason_is_whole_with_done(client: httpx.Client) -> None:
    response = _post(client, "dropped-after-finish", stream=True, text="dropped")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert "".join((e["choices"][0]["delta"].get("content") or "") for e in events[:-1] if e.get("choices")) == "whole"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "buffered"])
def test_a_hung_upstream_is_a_504_and_an_html_200_a_502(client: httpx.Client, stream: bool) -> None:
    hung = _post(client, "hang", stream=stream)
    assert hung.status_code == 504 and hung.json()["error"]["code"] == "upstream_timeout"
    html = _post(client, "html", stream=stream)
    assert html.status_code == 502
    assert "malformed" in orjson.loads(html.content)["error"]["message"]
