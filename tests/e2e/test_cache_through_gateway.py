"""The response cache seen from outside: a runtime process, its HTTP API and the upstream fixture.

Every test runs against the memory backend and against a real Redis (`STRATA_TEST_REDIS_URL`).
What a client can observe: the upstream is not called again, `x-strata-cache` says why, the
OpenAI body keeps its shape, and `/api/v1/usage` counts a hit at cost 0 with its savings.
"""

from __future__ import annotations

import json
import os
import time
import uuid
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
INTERNAL = {"x-strata-internal-token": GATEWAY_ENV["STRATA_INTERNAL_TOKEN"]}
PRICE_IN, PRICE_OUT = 0.15, 0.6  # gateway_config's gpt-4o-mini pricing, USD per 1M tokens


def cache_config(workdir: Path, upstream: UpstreamServer, backend: str) -> dict[str, Any]:
    if backend == "redis":
        url = os.environ.get("STRATA_TEST_REDIS_URL")
        if not url:
            pytest.fail('STRATA_TEST_REDIS_URL is not set: run `bash hack/services.sh up` and '
                        '`eval "$(bash hack/services.sh env)"`')
        redis = {"backend": "redis", "url": url, "keyPrefix": f"e2e-cache-{uuid.uuid4().hex[:10]}"}
    else:
        redis = {"backend": "memory"}
    return gateway_config(
        workdir, upstream.base_url,
        stores={"redis": redis, "sql": {"backend": "sqlite", "sqlitePath": str(workdir / "strata.db")},
                "vectors": {"backend": "memory"}},
        embedder={"provider": "local", "model": "all-MiniLM-L6-v2", "timeoutSeconds": 20},
        cache={"enabled": True, "backend": backend, "exact": {"enabled": True, "ttlSeconds": 600},
               "semantic": {"enabled": True, "threshold": 0.93, "ttlSeconds": 600, "maxTemperature": 0}},
    )


@pytest.fixture(scope="module", params=["memory", "redis"])
def runtime(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            openai_upstream_session: UpstreamServer) -> Iterator[RuntimeProcess]:
    workdir = tmp_path_factory.mktemp(f"cache-{request.param}")
    process = RuntimeProcess(cache_config(workdir, openai_upstream_session, request.param), workdir,
                             env=GATEWAY_ENV)
    process.start(timeout=90)
    yield process
    process.stop()


def unique(text: str) -> str:
    """Tests share one runtime per backend: a per-test marker keeps their entries apart."""
    return f"{text} [{uuid.uuid4().hex[:8]}]"


def chat(http: httpx.Client, text: str, *, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}
    return http.post("/v1/chat/completions", json=body, headers={**ACME, **(headers or {})})


def upstream_chats(upstream: UpstreamServer) -> int:
    return int(upstream.stats()["by_path"].get("/v1/chat/completions", 0))


def sse_events(response: httpx.Response) -> list[Any]:
    events = []
    for line in response.text.split("\n\n"):
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def cache_stats(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/internal/cache/stats", headers=INTERNAL)
    assert response.status_code == 200, response.text
    stats: dict[str, Any] = response.json()
    return stats


def wait_for_stores(http: httpx.Client, at_least: int) -> None:
    """A streamed answer is stored after its last chunk was sent; wait for that write."""
    deadline = time.monotonic() + 10
    while cache_stats(http)["stores"] < at_least:
        assert time.monotonic() < deadline, "the streamed answer was never stored"
        time.sleep(0.05)


# exact hits --------------------------------------------------------------------------------------


def test_a_repeated_chat_completion_is_answered_from_the_cache_without_an_upstream_call(
        http: httpx.Client, openai_upstream: UpstreamServer) -> None:
    text = unique("what are your opening hours")
    first = chat(http, text)
    assert first.status_code == 200, first.text
    assert first.headers["x-strata-cache"] == "miss"
    assert upstream_chats(openai_upstream) == 1

    second = chat(http, text)
    assert second.status_code == 200
    assert second.headers["x-strata-cache"] == "hit_exact"
    assert upstream_chats(openai_upstream) == 1
    a, b = first.json(), second.json()
    assert set(a) == set(b)  # the OpenAI body keeps its shape: no cache field leaks into it
    assert b["object"] == "chat.completion" and b["model"] == "gpt-4o-mini"
    assert b["choices"] == a["choices"] and b["usage"] == a["usage"]
    assert b["choices"][0]["message"]["content"] == f"echo: {text}"


def test_a_cache_hit_is_recorded_in_usage_at_cost_zero_with_the_savings_counted_apart(
        http: httpx.Client, openai_upstream: UpstreamServer) -> None:
    agent = f"usage-{uuid.uuid4().hex[:8]}"
    text = unique("please summarise my last three card payments")
    saved_before = cache_stats(http)["saved"]
    first = chat(http, text, headers={"x-strata-agent-id": agent})
    second = chat(http, text, headers={"x-strata-agent-id": agent})
    assert (first.headers["x-strata-cache"], second.headers["x-strata-cache"]) == ("miss", "hit_exact")
    upstream_usage = openai_upstream.stats()["usage"]
    prompt, completion = upstream_usage["prompt_tokens"], upstream_usage["completion_tokens"]
    assert first.json()["usage"] == upstream_usage  # one upstream call, this one
    cost = (prompt * PRICE_IN + completion * PRICE_OUT) / 1e6

    usage = http.get("/api/v1/usage", params={"agent": agent}, headers=ACME).json()
    totals = usage["totals"]
    assert totals["requests"] == 2
    assert totals["cache_hits"] == 1
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (prompt, completion)
    assert totals["cost"] == pytest.approx(cost, abs=1e-12)
    assert (totals["saved_prompt_tokens"], totals["saved_completion_tokens"]) == (prompt, completion)
    assert totals["saved_cost"] == pytest.approx(cost, abs=1e-12)
    assert [i["model"] for i in usage["items"]] == ["gpt-4o-mini"]
    saved = cache_stats(http)["saved"]  # the cache's own counters agree with usage
    assert saved["prompt_tokens"] - saved_before["prompt_tokens"] == prompt
    assert saved["completion_tokens"] - saved_before["completion_tokens"] == completion


def test_a_streamed_answer_is_replayed_from_the_cache_as_the_same_sse_chunks(
        http: httpx.Client, openai_upstream: UpstreamServer) -> None:
    text = unique("one two three four five")
    before = cache_stats(http)["stores"]
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}]}
    first = http.post("/v1/chat/completions", json=body, headers=ACME)
    assert first.headers["x-strata-cache"] == "miss"
    assert first.headers["content-type"].startswith("text/event-stream")
    wait_for_stores(http, before + 1)

    second = http.post("/v1/chat/completions", json=body, headers=ACME)
    assert second.status_code == 200
    assert second.headers["x-strata-cache"] == "hit_exact"
    assert upstream_chats(openai_upstream) == 1
    live, replayed = sse_events(first), sse_events(second)
    assert live[-1] == replayed[-1] == "[DONE]"

    def shape(events: list[Any]) -> list[Any]:
        return [(e["object"], e["model"], e["choices"], e.get("usage")) for e in events[:-1]]

    assert shape(replayed) == shape(live)
    text_out = "".join(c["delta"].get("content") or "" for e in replayed[:-1] for c in e["choices"])
    assert text_out == f"echo: {text}"
    assert replayed[-2]["choices"] == [] and replayed[-2]["usage"] == live[-2]["usage"]

    plain = chat(http, text)  # `stream` is not part of the key: the same answer, as one body
    assert plain.headers["x-strata-cache"] == "hit_exact"
    assert plain.json()["choices"][0]["message"]["content"] == f"echo: {text}"
    assert upstream_chats(openai_upstream) == 1


# semantic hits ----------------------------------------------------------------------------------


def test_a_paraphrase_at_temperature_zero_is_a_semantic_hit(http: httpx.Client,
                                                            openai_upstream: UpstreamServer) -> None:
    system = {"role": "system", "content": unique("You are a banking assistant.")}

    def ask(text: str, temperature: float) -> httpx.Response:
        body = {"model": "gpt-4o-mini", "temperature": temperature,
                "messages": [system, {"role": "user", "content": text}]}
        return http.post("/v1/chat/completions", json=body, headers=ACME)

    stored = ask("How do I reset my password?", 0)
    assert stored.headers["x-strata-cache"] == "miss"
    paraphrase = ask("How can I reset my password?", 0)
    assert paraphrase.headers["x-strata-cache"] == "hit_semantic"
    assert paraphrase.json()["choices"] == stored.json()["choices"]
    assert upstream_chats(openai_upstream) == 1
    hot = ask("How could I reset my password?", 0.7)  # above semantic.maxTemperature: never semantic
    assert hot.headers["x-strata-cache"] == "miss"
    assert cache_stats(http)["hits"]["semantic"] >= 1


def test_a_question_with_a_different_number_is_not_a_semantic_hit(http: httpx.Client,
                                                                   openai_upstream: UpstreamServer) -> None:
    system = {"role": "system", "content": unique("You are a calculator.")}

    def ask(text: str) -> httpx.Response:
        body = {"model": "gpt-4o-mini", "temperature": 0, "messages": [system, {"role": "user", "content": text}]}
        return http.post("/v1/chat/completions", json=body, headers=ACME)

    assert ask("What is 2+3?").headers["x-strata-cache"] == "miss"
    other = ask("What is 2+4?")
    assert other.headers["x-strata-cache"] == "miss"
    assert other.json()["choices"][0]["message"]["content"] == "echo: What is 2+4?"
    same = ask("What is 2 + 3?")
    assert same.headers["x-strata-cache"] == "hit_semantic"
    assert same.json()["choices"][0]["message"]["content"] == "echo: What is 2+3?"
    assert upstream_chats(openai_upstream) == 2


def test_another_tenant_never_gets_the_cached_answer(http: httpx.Client, openai_upstream: UpstreamServer) -> None:
    text = unique("what is my account balance")
    assert chat(http, text).headers["x-strata-cache"] == "miss"
    globex = http.post("/v1/chat/completions", headers=GLOBEX, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
    assert globex.headers["x-strata-cache"] == "miss"
    assert upstream_chats(openai_upstream) == 2


# the internal proxy -----------------------------------------------------------------------------


def test_the_internal_proxy_reports_miss_then_hit_with_the_same_answer(http: httpx.Client,
                                                                      openai_upstream: UpstreamServer) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": unique("block my card")}],
            "metadata": {"tenant_id": "acme", "agent_id": "support"}}
    first = http.post("/internal/llm/proxy", json=body, headers=INTERNAL).json()
    second = http.post("/internal/llm/proxy", json=body, headers=INTERNAL).json()
    assert (first["cache"], second["cache"]) == ("miss", "hit_exact")
    assert first["provider"] == "openai" and second["provider"] == "cache"
    assert second["content"] == first["content"] and second["usage"] == first["usage"]
    assert second["model_resolved"] == "gpt-4o-mini"
    assert upstream_chats(openai_upstream) == 1


# Cache-Control over HTTP ------------------------------------------------------------------------


def test_cache_control_no_cache_goes_upstream_and_the_control_never_reaches_it(
        http: httpx.Client, openai_upstream: UpstreamServer) -> None:
    text = unique("list my standing orders")
    chat(http, text)
    openai_upstream.control(record=True)
    fresh = chat(http, text, headers={"cache-control": "no-cache"})
    assert fresh.headers["x-strata-cache"] == "miss"
    assert upstream_chats(openai_upstream) == 2
    sent = openai_upstream.requests()[-1]["body"]
    assert "cache" not in sent and sent["messages"][0]["content"] == text
    assert chat(http, text).headers["x-strata-cache"] == "hit_exact"  # no-cache still refreshed the entry


def test_cache_control_no_store_leaves_nothing_behind(http: httpx.Client, openai_upstream: UpstreamServer) -> None:
    text = unique("what is the iban of my savings account")
    assert chat(http, text, headers={"cache-control": "no-store"}).headers["x-strata-cache"] == "miss"
    assert chat(http, text).headers["x-strata-cache"] == "miss"
    assert upstream_chats(openai_upstream) == 2


def test_cache_control_max_age_shortens_the_lifetime_of_what_is_stored(
        http: httpx.Client, openai_upstream: UpstreamServer) -> None:
    short, normal = unique("short lived answer"), unique("normal lived answer")
    chat(http, short, headers={"cache-control": "max-age=1"})
    chat(http, normal)
    time.sleep(2.2)
    assert chat(http, short).headers["x-strata-cache"] == "miss"
    assert chat(http, normal).headers["x-strata-cache"] == "hit_exact"
    assert upstream_chats(openai_upstream) == 3


def test_cache_control_applies_to_every_request_of_an_internal_batch(
        http: httpx.Client, openai_upstream: UpstreamServer) -> None:
    items = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": unique("batch item")}],
              "metadata": {"tenant_id": "acme"}} for _ in range(2)]
    stored = http.post("/internal/llm/batch", json={"requests": items}, headers={**INTERNAL,
                                                                                "cache-control": "no-store"})
    assert [r["cache"] for r in stored.json()["results"]] == ["miss", "miss"]
    again = http.post("/internal/llm/batch", json={"requests": items}, headers=INTERNAL)
    assert [r["cache"] for r in again.json()["results"]] == ["miss", "miss"]
    third = http.post("/internal/llm/batch", json={"requests": items}, headers=INTERNAL)
    assert [r["cache"] for r in third.json()["results"]] == ["hit_exact", "hit_exact"]
    assert upstream_chats(openai_upstream) == 4


def test_a_malformed_cache_control_in_the_body_is_a_clear_422(http: httpx.Client,
                                                              openai_upstream: UpstreamServer) -> None:
    response = chat(http, unique("hello"), cache={"no-cache": "yes"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_failed"
    assert response.json()["error"]["field"] == "cache.no-cache"
    assert upstream_chats(openai_upstream) == 0


# ACL scopes -------------------------------------------------------------------------------------


def test_different_acl_scopes_never_share_an_exact_or_semantic_entry(http: httpx.Client,
                                                                     openai_upstream: UpstreamServer) -> None:
    system = {"role": "system", "content": unique("You answer from the document store.")}

    def ask(text: str, scope: str | None) -> str:
        headers = {**ACME, **({"x-strata-acl-scope": scope} if scope else {})}
        body = {"model": "gpt-4o-mini", "temperature": 0, "messages": [system, {"role": "user", "content": text}]}
        response = http.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 200, response.text
        return str(response.headers["x-strata-cache"])

    assert ask("What is the Q3 salary budget?", "group:hr") == "miss"
    assert ask("What is the Q3 salary budget?", "group:sales") == "miss"
    assert ask("What is the Q3 salary budget?", None) == "miss"
    assert ask("What's the Q3 salary budget?", "group:eng") == "miss"
    assert ask("What is the Q3 salary budget?", "group:hr") == "hit_exact"
    assert ask("What's the Q3 salary budget?", "group:sales") == "hit_semantic"
    assert upstream_chats(openai_upstream) == 4


def test_the_internal_proxy_takes_the_acl_scope_from_metadata(http: httpx.Client,
                                                              openai_upstream: UpstreamServer) -> None:
    text = unique("show the board minutes")

    def proxy(scope: str | None) -> str:
        metadata = {"tenant_id": "acme", **({"acl_scope": scope} if scope else {})}
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "metadata": metadata}
        return str(http.post("/internal/llm/proxy", json=body, headers=INTERNAL).json()["cache"])

    assert [proxy("board"), proxy("staff"), proxy(None), proxy("board")] == ["miss", "miss", "miss", "hit_exact"]


def test_an_acl_scope_header_that_disagrees_with_metadata_is_refused(http: httpx.Client,
                                                                     openai_upstream: UpstreamServer) -> None:
    response = chat(http, unique("x"), headers={"x-strata-acl-scope": "a"}, metadata={"acl_scope": "b"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "metadata.acl_scope"
    bad = chat(http, unique("x"), headers={"x-strata-acl-scope": "has spaces"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
    assert upstream_chats(openai_upstream) == 0
