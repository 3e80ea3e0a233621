"""The official openai SDK, unchanged, against a real runtime process and a real upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import GATEWAY_ENV, gateway_config
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess

ACME_KEY = GATEWAY_ENV["STRATA_KEY_ACME"]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory,
            openai_upstream_session: UpstreamServer) -> Iterator[RuntimeProcess]:
    workdir: Path = tmp_path_factory.mktemp("sdk")
    process = RuntimeProcess(gateway_config(workdir, openai_upstream_session.base_url), workdir, env=GATEWAY_ENV)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def client(runtime: RuntimeProcess, openai_upstream: UpstreamServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=runtime.base_url + "/v1", api_key=ACME_KEY, max_retries=0)


def test_chat_completion_returns_the_upstream_answer_and_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello gateway"}], user="end-user-1")
    assert completion.choices[0].message.content == "echo: hello gateway"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 3)
    assert completion.model == "gpt-4o-mini"


def test_streaming_with_include_usage_delivers_every_piece_and_a_final_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three four"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two three four"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_streaming_without_include_usage_sends_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "quiet please"}], stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_the_async_client_works_for_plain_and_streamed_calls(runtime: RuntimeProcess,
                                                                   openai_upstream: UpstreamServer) -> None:
    client = openai.AsyncOpenAI(base_url=runtime.base_url + "/v1", api_key=ACME_KEY, max_retries=0)
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "async hello"}])
    assert completion.choices[0].message.content == "echo: async hello"
    pieces = [c.choices[0].delta.content or "" async for c in await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "async stream"}], stream=True) if c.choices]
    assert "".join(pieces) == "echo: async stream"
    await client.close()


def test_a_tool_call_round_trip_ends_in_a_text_answer(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {
        "name": "get_balance", "description": "Account balance",
        "parameters": {"type": "object", "properties": {"account": {"type": "string"}}, "required": ["account"]}}}]
    messages: list = [{"role": "user", "content": 'call tool get_balance {"account": "chk-1"}'}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools,
                                           tool_choice="auto")
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_balance"
    assert json.loads(call.function.arguments) == {"account": "chk-1"}
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "balance 42.00"}]
    second = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    assert second.choices[0].message.content == "tool result: balance 42.00"


def test_streamed_tool_calls_reassemble_into_the_same_arguments(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": 'call tool lookup {"q": "cards"}'}],
        tools=tools, stream=True)
    arguments = "".join(tc.function.arguments or "" for c in stream if c.choices
                        for tc in (c.choices[0].delta.tool_calls or []))
    assert json.loads(arguments) == {"q": "cards"}


def test_embeddings_come_back_as_vectors_in_input_order(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="embed", input=["card arrival", "password reset"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 384
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == 4


def test_models_lists_the_logical_model_names(client: openai.OpenAI) -> None:
    assert {"gpt-4o-mini", "embed"} <= {m.id for m in client.models.list()}


def test_a_wrong_api_key_is_an_authentication_error(runtime: RuntimeProcess) -> None:
    client = openai.OpenAI(base_url=runtime.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])


def test_an_unknown_model_is_a_not_found_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "not_found"  # type: ignore[index]


def test_an_upstream_that_keeps_rate_limiting_surfaces_as_a_rate_limit_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="always-429", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers.get("retry-after")


def test_a_failing_upstream_is_a_502_that_does_not_leak_the_upstream_key(client: openai.OpenAI,
                                                                         openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(fail_next=1, fail_status=500)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_error"  # type: ignore[index]
    assert "sk-upstream-secret" not in info.value.response.text


def test_a_body_tenant_that_disagrees_with_the_key_is_forbidden(client: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"tenant_id": "globex"})


def test_bad_input_is_a_400_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert info.value.body["field"] == "messages"  # type: ignore[index]


def test_the_upstream_sees_its_own_model_name_and_key_but_no_tenant_fields(client: openai.OpenAI,
                                                                           openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(record=True)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                   extra_body={"tenant_id": "acme", "metadata": {"agent_id": "support"}})
    seen = openai_upstream.requests()[-1]
    assert seen["headers"]["authorization"] == "Bearer sk-upstream-secret"
    assert seen["body"]["model"] == "gpt-4o-mini"
    assert "tenant_id" not in seen["body"] and "metadata" not in seen["body"]


INTERNAL = {"x-strata-internal-token": GATEWAY_ENV["STRATA_INTERNAL_TOKEN"]}


def test_internal_proxy_answers_in_the_seed_shape_for_the_metadata_tenant(runtime: RuntimeProcess,
                                                                          openai_upstream: UpstreamServer) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "seed call"}],
            "metadata": {"agent_id": "support", "tenant_id": "acme", "channel_id": "web"}}
    status, result = runtime.request("POST", "/internal/llm/proxy", body, headers=INTERNAL)
    assert status == 200
    assert result["content"] == "echo: seed call"
    assert result["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert (result["provider"], result["model_resolved"], result["cache"]) == ("openai", "gpt-4o-mini", "disabled")
    status, _ = runtime.request("POST", "/internal/llm/proxy", body, headers={"x-strata-internal-token": "nope"})
    assert status == 403


def test_internal_batch_keeps_order_and_reports_each_failure_alone(runtime: RuntimeProcess,
                                                                    openai_upstream: UpstreamServer) -> None:
    meta = {"tenant_id": "acme"}
    requests = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"item {i}"}], "metadata": meta}
                for i in range(3)]
    requests.insert(1, {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}], "metadata": meta})
    status, result = runtime.request("POST", "/internal/llm/batch", {"requests": requests}, headers=INTERNAL)
    assert status == 200
    assert [r["ok"] for r in result["results"]] == [True, False, True, True]
    assert result["results"][1]["error"]["code"] == "not_found"
    assert result["results"][3]["content"] == "echo: item 2"


def test_usage_api_shows_a_tenant_only_its_own_usage(runtime: RuntimeProcess,
                                                     openai_upstream: UpstreamServer) -> None:
    globex = openai.OpenAI(base_url=runtime.base_url + "/v1", api_key=GATEWAY_ENV["STRATA_KEY_GLOBEX"],
                           max_retries=0)
    globex.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "globex only"}])
    status, mine = runtime.get("/api/v1/usage", headers={"authorization": "Bearer " + GATEWAY_ENV["STRATA_KEY_GLOBEX"]})
    assert status == 200
    assert {item["tenant"] for item in mine["items"]} == {"globex"}
    status, _ = runtime.get("/api/v1/usage?tenant=acme",
                            headers={"authorization": "Bearer " + GATEWAY_ENV["STRATA_KEY_GLOBEX"]})
    assert status == 403
    status, everything = runtime.get("/api/v1/usage", headers=INTERNAL)
    assert {"acme", "globex"} <= {item["tenant"] for item in everything["items"]}
