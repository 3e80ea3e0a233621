"""A careless or hostile client's sweep of every JSON route: each hostile body gets a JSON error with
a stable code and a 4xx (503 only where a feature is switched off in this config), never a 500.

The sweep sends each route its valid body with one field at a time replaced by a value of another
type (list, object, number, null, boolean, 2**70, 1e400, NaN, a lone surrogate, a NUL...), plus
bodies that are not JSON objects at all. The named cases below are the ones the sweep found.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import ACME, INTERNAL

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}
INTERNAL_CHAT = {**CHAT, "metadata": {"tenant_id": "acme", "agent_id": "support"}}
SCOPE = {"tenant_id": "acme", "agent_id": "support"}

ROUTES: list[tuple[str, dict[str, str], dict[str, Any]]] = [
    ("/api/v1/query", ACME, {"message": "hi", "session_id": "sweep", "chatbot_id": "support"}),
    ("/v1/chat/completions", ACME, CHAT),
    ("/v1/embeddings", ACME, {"model": "demo", "input": "hello", "dimensions": 8}),
    ("/internal/llm/proxy", INTERNAL, INTERNAL_CHAT),
    ("/internal/llm/stream", INTERNAL, INTERNAL_CHAT),
    ("/internal/llm/batch", INTERNAL, {"requests": [INTERNAL_CHAT]}),
    ("/internal/route", INTERNAL, {**SCOPE, "message": "hi"}),
    ("/internal/agent-memory/query", INTERNAL, {**SCOPE, "query": "hi", "limit": 3}),
    ("/internal/agent-memory/store", INTERNAL, {**SCOPE, "kind": "kb", "content": "hi"}),
    ("/internal/agent-memory/summarize", INTERNAL, {**SCOPE, "content": "hi"}),
    ("/internal/cache/invalidate", INTERNAL, {"pattern": "*"}),
    ("/internal/tools/call", INTERNAL, {"tool_id": "x", **SCOPE, "args": {"a": 1}}),
    ("/api/v1/evolution/versions", INTERNAL, {"kind": "skill", "name": "acme/g", "content": {"a": 1},
                                              "author": "me"}),
    ("/api/v1/evolution/rollback", INTERNAL, {"kind": "skill", "name": "acme/g", "version": 1, "author": "me"}),
    ("/api/v1/evolution/experiments", INTERNAL, {"kind": "skill", "name": "acme/g", "author": "me",
                                                 "arms": [{"label": "a", "version": 1, "weight": 100}]}),
    ("/api/v1/evolution/experiments/e1/outcomes", INTERNAL, {"session_id": "s1", "success": True,
                                                             "latencyMs": 5.0}),
    ("/api/v1/feedback", ACME, {"experiment_id": "e1", "session_id": "s1", "score": 1}),
]

# Raw JSON text for a field's value: every type but the right one, and the edges of numbers and strings.
VALUES = {"list": "[1]", "object": '{"a": 1}', "number": "1", "null": "null", "true": "true", "string": '"x"',
          "int_2_70": str(2**70), "negative": "-1", "zero": "0", "1e400": "1e400", "nan": "NaN",
          "-infinity": "-Infinity", "lone_surrogate": '"a\\ud800b"', "nul": '"a\\u0000b"', "empty": '""'}
NOT_OBJECTS = {"invalid_json": b'{"a":', "empty_body": b"", "array": b"[]", "string": b'"s"', "number": b"1",
               "null": b"null", "empty_object": b"{}", "bad_utf8": b'{"x": "\xff\xfe"}',
               "deep": b'{"x":' + b"[" * 10_000 + b"]" * 10_000 + b"}"}
PLACEHOLDER = "\u0001placeholder\u0001"


def with_value(body: dict[str, Any], path: tuple[str | int, ...], raw: str) -> bytes:
    """`body` as JSON text with the value at `path` replaced by the raw JSON text `raw`."""
    copy = json.loads(json.dumps(body))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = PLACEHOLDER
    return json.dumps(copy).replace(json.dumps(PLACEHOLDER), raw).encode()


def field_paths(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every field of `value`, nested ones included (the first item of a list stands for all)."""
    items: list[tuple[str | int, Any]] = (list(value.items()) if isinstance(value, dict)
                                          else [(0, value[0])] if isinstance(value, list) and value else [])
    for key, item in items:
        yield (*path, key)
        yield from field_paths(item, (*path, key))


def cases() -> Iterator[Any]:
    for path, headers, body in ROUTES:
        for name, raw in NOT_OBJECTS.items():
            yield pytest.param(path, headers, raw, id=f"{path}:{name}")
        for field in field_paths(body):
            label = ".".join(map(str, field))
            for name, value in VALUES.items():
                yield pytest.param(path, headers, with_value(body, field, value), id=f"{path}:{label}={name}")


def assert_clear_answer(response: httpx.Response) -> None:
    """A success, or a JSON error with a stable code and a 4xx (503: a feature this config leaves off)."""
    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json"), response.text
        error = response.json()["error"]
        assert isinstance(error["code"], str) and error["code"], response.text


@pytest.mark.parametrize(("path", "headers", "raw"), list(cases()))
async def test_every_route_answers_every_hostile_body_with_a_clear_error(api: httpx.AsyncClient, path: str,
                                                                        headers: dict[str, str],
                                                                        raw: bytes) -> None:
    response = await api.post(path, content=raw, headers={**headers, "content-type": "application/json"})
    assert_clear_answer(response)


# -- what the sweep found ----------------------------------------------------------------------------

@pytest.mark.parametrize("role", [["user"], {"role": "user"}])
@pytest.mark.parametrize(("path", "headers", "body"), [
    ("/v1/chat/completions", ACME, CHAT), ("/internal/llm/proxy", INTERNAL, INTERNAL_CHAT),
    ("/internal/llm/stream", INTERNAL, INTERNAL_CHAT)])
async def test_a_role_that_is_not_a_string_is_a_400_naming_it(api: httpx.AsyncClient, path: str,
                                                             headers: dict[str, str], body: dict[str, Any],
                                                             role: Any) -> None:
    response = await api.post(path, json={**body, "messages": [{"role": role, "content": "hi"}]}, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "messages.0.role"


async def test_a_batch_item_with_a_role_that_is_not_a_string_fails_alone(api: httpx.AsyncClient) -> None:
    bad = {**INTERNAL_CHAT, "messages": [{"role": ["user"], "content": "hi"}]}
    response = await api.post("/internal/llm/batch", json={"requests": [INTERNAL_CHAT, bad]}, headers=INTERNAL)
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["ok"] is True
    assert (second["ok"], second["status"], second["error"]["field"]) == (False, 400, "messages.0.role")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_a_number_json_cannot_hold_is_refused_not_stored_as_null(api: httpx.AsyncClient, number: str) -> None:
    name = f"acme/sweep-{number.strip('-').lower()}"
    body = f'{{"kind": "skill", "name": "{name}", "content": {{"weights": [1, {number}]}}, "author": "me"}}'
    response = await api.post("/api/v1/evolution/versions", content=body.encode(), headers=INTERNAL)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "content.weights.1"
    listed = await api.get("/api/v1/evolution/versions", params={"kind": "skill", "name": name}, headers=INTERNAL)
    assert listed.json()["versions"] == []  # nothing stored


async def test_an_infinite_latency_outcome_is_a_422(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/evolution/experiments/e1/outcomes", headers=INTERNAL,
                              content=b'{"session_id": "s1", "latencyMs": 1e400}')
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "latencyMs"


@pytest.mark.parametrize("params", [{"end": "0001-01-01"}, {"end": "0001-01-03"},
                                    {"start": "0001-01-01", "end": "0001-01-01"}])
async def test_usage_at_the_first_representable_date_is_answered(api: httpx.AsyncClient,
                                                                 params: dict[str, str]) -> None:
    response = await api.get("/api/v1/usage", params=params, headers=ACME)
    assert response.status_code == 200, response.text
    assert response.json()["start"] == "0001-01-01"


@pytest.mark.parametrize("dimensions", [0, -5, 2**70, 1.5, True, "8"])
async def test_embedding_dimensions_must_be_a_positive_integer(api: httpx.AsyncClient, dimensions: Any) -> None:
    response = await api.post("/v1/embeddings", json={"model": "demo", "input": "x", "dimensions": dimensions},
                              headers=ACME)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "dimensions"


async def test_the_demo_embedder_refuses_a_vector_too_large_to_allocate(api: httpx.AsyncClient) -> None:
    # Unbounded, 10**9 dimensions would be a list of a billion floats (8 GB) built for one request.
    response = await api.post("/v1/embeddings", json={"model": "demo", "input": "x", "dimensions": 4097},
                              headers=ACME)
    assert response.status_code == 400, response.text
    ok = await api.post("/v1/embeddings", json={"model": "demo", "input": "x", "dimensions": 8}, headers=ACME)
    assert len(ok.json()["data"][0]["embedding"]) == 8


# -- found through a real server (raw sockets) ------------------------------------------------------

def test_a_log_line_with_an_integer_beyond_64_bits_is_still_written() -> None:
    # An internal caller's `X-Strata-Depth: 99999999999999999999999` reached the cascade-limit log line
    # as an int; orjson refused it and the line was lost (a traceback on stderr instead).
    from strata_runtime.logs import JsonFormatter

    record = logging.LogRecord("strata.tools", logging.INFO, __file__, 1, "cascade limit", None, None)
    record.depth = 10**23
    line = json.loads(JsonFormatter().format(record))
    assert (line["msg"], line["depth"]) == ("cascade limit", 10**23)


async def test_a_client_gone_before_its_body_was_read_is_a_499_not_a_500(api: httpx.AsyncClient,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """What the HTTP parser does to a request whose body it rejects (a bad chunk size, say) after the
    head was handed to the app: the app's read sees a disconnect. The client already had the parser's
    400; the runtime counted a 500 and logged a stack trace for it."""
    app = api._transport.app  # type: ignore[attr-defined]
    requests = app.state.services.metrics.http_requests
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"strata.test"), (b"authorization", ACME["authorization"].encode()),
               (b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/v1/query", "raw_path": b"/api/v1/query", "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 5000), "server": ("strata.test", 80)}
    before = requests.labels("/api/v1/query", "POST", "499")._value.get()
    with caplog.at_level(logging.INFO, logger="strata.runtime"):
        await app(scope, receive, send)
    assert not [m for m in sent if m["type"] == "http.response.start"]  # nobody left to answer
    assert requests.labels("/api/v1/query", "POST", "499")._value.get() == before + 1
    assert not [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert [r.levelno for r in caplog.records if r.getMessage() == "request failed"] == [logging.INFO]
