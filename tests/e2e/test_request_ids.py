"""Request ids and upstream errors as a client and an operator see them: a runtime process, its log, the SDK.

A request id is the client's valid `X-Request-ID` or a new `req_...` one; it is on every answer
(errors too), in the error body, in the request's log lines and sent upstream. Upstream errors
keep their OpenAI code/type/param and message; a stream that never finished is an error event,
never a cached answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.e2e.conftest import GATEWAY_ENV, gateway_config
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess

ACME = {"Authorization": f"Bearer {GATEWAY_ENV['STRATA_KEY_ACME']}"}
MISBEHAVING = {"long-context": "misbehave-context-length", "breaks-mid-stream": "misbehave-midstream-error",
               "never-finishes": "misbehave-no-terminal"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory,
            openai_upstream_session: UpstreamServer) -> Iterator[RuntimeProcess]:
    workdir: Path = tmp_path_factory.mktemp("ids")
    config = gateway_config(workdir, openai_upstream_session.base_url,
                            cache={"enabled": True, "backend": "memory", "streaming": True,
                                   "exact": {"enabled": True, "ttlSeconds": 600}, "semantic": {"enabled": False}})
    config["models"] += [{"name": name, "provider": "openai", "upstreamModel": upstream, "maxRetries": 0,
                          "baseUrl": openai_upstream_session.base_url, "apiKeyEnv": "UPSTREAM_KEY"}
                         for name, upstream in MISBEHAVING.items()]
    process = RuntimeProcess(config, workdir, env=GATEWAY_ENV)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def sdk(runtime: RuntimeProcess, openai_upstream: UpstreamServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=runtime.base_url + "/v1", api_key=GATEWAY_ENV["STRATA_KEY_ACME"], max_retries=0)


def _chat(model: str = "gpt-4o-mini", text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def _logged(runtime: RuntimeProcess, request_id: str, msg: str) -> list[dict[str, Any]]:
    """The request's log lines with this message (written just after the answer: waited for, briefly)."""
    for _ in range(100):
        lines = [e for e in _log_lines(runtime, request_id) if e["msg"] == msg]
        if lines:
            time.sleep(0.1)  # a duplicate line would be written right behind the first one
            return [e for e in _log_lines(runtime, request_id) if e["msg"] == msg]
        time.sleep(0.1)
    return []


def _log_lines(runtime: RuntimeProcess, request_id: str) -> list[dict[str, Any]]:
    lines = []
    for raw in runtime.log_path.read_bytes().splitlines():
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("request_id") == request_id:
            lines.append(entry)
    return lines


def test_a_valid_client_request_id_is_returned_and_sent_upstream(http: httpx.Client,
                                                                 openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(record=True)
    response = http.post("/v1/chat/completions", json=_chat(text="traced"),
                         headers={**ACME, "X-Request-ID": "trace-7f3a/2"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "trace-7f3a/2"
    sent = openai_upstream.requests()[-1]
    assert sent["headers"]["x-request-id"] == "trace-7f3a/2"


def test_without_a_request_id_each_request_gets_a_new_one(http: httpx.Client) -> None:
    ids = {http.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(i.startswith("req_") for i in ids)


@pytest.mark.parametrize("value", [b"\xff\xfe\xfd", "caf\u00e9".encode(), b"has space", b"x" * 200])
@pytest.mark.parametrize("path", ["/healthz", "/v1/models"])
def test_an_invalid_request_id_is_replaced_never_a_failure(http: httpx.Client, value: bytes, path: str) -> None:
    headers = [(b"authorization", ACME["Authorization"].encode()), (b"x-request-id", value)]
    response = http.get(path, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"].startswith("req_")


ERRORS = {
    "unauthorized": ("POST", "/v1/chat/completions", {"Authorization": "Bearer wrong"}, orjson.dumps(_chat()), 401),
    "bad json": ("POST", "/v1/chat/completions", ACME, b"{not json", 400),
    "unknown model": ("POST", "/v1/chat/completions", ACME, orjson.dumps(_chat(model="no-such-model")), 404),
    "unknown route": ("GET", "/no/such/route", {}, None, 404),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_every_error_answer_has_its_id_in_header_body_and_exactly_one_log_line(
        http: httpx.Client, runtime: RuntimeProcess, case: str) -> None:
    method, path, headers, content, status = ERRORS[case]
    response = http.request(method, path, headers={**headers, "Content-Type": "application/json"}, content=content)
    assert response.status_code == status, response.text
    request_id = response.headers["x-request-id"]
    assert response.json()["error"]["request_id"] == request_id
    failed = _logged(runtime, request_id, "request failed")
    assert len(failed) == 1
    assert failed[0]["status"] == status


def test_the_openai_sdk_sees_the_request_id_of_answers_and_errors(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(**_chat())
    assert completion._request_id is not None and completion._request_id.startswith("req_")
    bad = openai.OpenAI(base_url=str(sdk.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.request_id is not None


def test_context_length_exceeded_reaches_the_sdk_with_code_param_and_message(
        sdk: openai.OpenAI, runtime: RuntimeProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(**_chat(model="long-context"))
    error = info.value
    assert (error.code, error.param, error.type) == ("context_length_exceeded", "messages", "invalid_request_error")
    assert "maximum context length is 8192 tokens" in error.message
    assert error.request_id is not None
    failed = _logged(runtime, error.request_id, "llm call failed")[0]
    assert (failed["upstream_status"], failed["upstream_code"], failed["phase"]) == \
        (400, "context_length_exceeded", "headers")


def test_an_error_in_the_middle_of_a_stream_reaches_the_sdk_with_its_message(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(**_chat(model="breaks-mid-stream"), stream=True)
    with pytest.raises(openai.APIError, match="The server had an error while processing your request"):
        for _ in stream:
            pass


def _sse(http: httpx.Client, body: dict[str, Any]) -> tuple[str, list[bytes]]:
    with http.stream("POST", "/v1/chat/completions", json=body, headers=ACME) as response:
        assert response.status_code == 200
        data = b"".join(response.iter_bytes())
    events = [e.removeprefix(b"data: ") for e in data.split(b"\n\n") if e]
    return response.headers["x-strata-cache"], events


def test_a_stream_that_never_finished_ends_in_an_error_event_and_is_never_cached(
        http: httpx.Client, openai_upstream: UpstreamServer) -> None:
    body = _chat(model="never-finishes", text="cut short", stream=True)
    for _ in range(2):
        cache, events = _sse(http, body)
        assert cache == "miss"
        assert b"[DONE]" not in events
        assert orjson.loads(events[-1])["error"]["code"] == "upstream_incomplete"
        text = "".join(orjson.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
        assert text == "echo: cut short"
    assert openai_upstream.stats()["by_path"]["/v1/chat/completions"] == 2
