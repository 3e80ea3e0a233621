"""Cache correctness on real Redis and the real upstream process: scope, fallback models, usage on
streams, the Redis size bounds and invalidation by pattern."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from strata_runtime.cache.service import CacheService
from strata_runtime.config import CachePolicySpec, RedisStoreConfig
from strata_runtime.gateway.contract import CallContext
from strata_runtime.stores.redis import RedisConnector

SYSTEM = {"role": "system", "content": "You are a banking assistant."}


def chat(text: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [SYSTEM, {"role": "user", "content": text}], "temperature": 0, **extra}


@pytest.fixture
async def http(openai_upstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=openai_upstream.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def connector() -> AsyncIterator[RedisConnector]:
    url = os.environ.get("STRATA_TEST_REDIS_URL")
    if not url:
        pytest.fail('STRATA_TEST_REDIS_URL not set (run: eval "$(bash hack/services.sh env)")')
    prefix = f"test-cc-{uuid.uuid4().hex[:10]}"
    c = RedisConnector(RedisStoreConfig(backend="redis", url=url, key_prefix=prefix), os.environ)
    await c.start()
    yield c
    client = c.client
    if client is not None:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for k in keys:
            await client.unlink(k)
    await c.close()


def redis_cache(connector: RedisConnector, **policy: Any) -> CacheService:
    return CacheService(CachePolicySpec.model_validate({"backend": "redis", **policy}), redis=connector)


async def ask(
    cache: CacheService, http: httpx.AsyncClient, body: dict[str, Any], ctx: CallContext, answered_by: str | None = None
) -> tuple[dict[str, Any], str]:
    async def compute() -> dict[str, Any]:
        response = await http.post("/chat/completions", json={**body, "stream": False})
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        data["model"] = answered_by or body["model"]  # what the gateway writes: the model that answered
        return data

    return await cache.complete(dict(body), ctx, compute)


async def test_by_default_end_users_of_a_tenant_do_not_share_answers(connector, http):
    cache = redis_cache(connector)
    alice, bob = CallContext(tenant="acme", user="alice"), CallContext(tenant="acme", user="bob")
    await ask(cache, http, chat("What is my balance?"), alice)
    assert (await ask(cache, http, chat("What is my balance?"), bob))[1] == "miss"
    assert (await ask(cache, http, chat("What is my balance?"), alice))[1] == "hit_exact"


async def test_scope_tenant_shares_between_users_but_never_across_acl_scopes(connector, http):
    cache = redis_cache(connector, scope="tenant")
    alice = CallContext(tenant="acme", user="alice", acl_scope="team:a")
    await ask(cache, http, chat("What are the branch opening hours?"), alice)
    bob_same_acl = CallContext(tenant="acme", user="bob", acl_scope="team:a")
    bob_other_acl = CallContext(tenant="acme", user="bob", acl_scope="team:b")
    assert (await ask(cache, http, chat("What are the branch opening hours?"), bob_same_acl))[1] == "hit_exact"
    assert (await ask(cache, http, chat("What are the branch opening hours?"), bob_other_acl))[1] == "miss"


async def test_an_answer_from_a_fallback_model_is_cached_under_that_model(connector, http):
    cache = redis_cache(connector)
    ctx = CallContext(tenant="acme")
    _, first = await ask(cache, http, chat("Explain wire fees"), ctx, answered_by="backup-model")
    assert first == "miss"
    # Asked again for the primary: not served the fallback's answer under the primary's name.
    again, second = await ask(cache, http, chat("Explain wire fees"), ctx)
    assert second == "miss" and again["model"] == "gpt-4o-mini"
    # The fallback's own key holds it (and now the primary's answer is cached under the primary).
    from_backup, third = await ask(cache, http, chat("Explain wire fees", model="backup-model"), ctx)
    assert third == "hit_exact" and from_backup["model"] == "backup-model"
    assert (await ask(cache, http, chat("Explain wire fees"), ctx))[1] == "hit_exact"


async def test_a_stream_without_include_usage_still_hands_the_real_usage_to_the_gateway(connector, http):
    cache = redis_cache(connector)
    ctx = CallContext(tenant="acme")
    body = chat("Tell me about savings accounts", stream=True)  # the client did not ask for usage

    def compute():
        async def run() -> AsyncIterator[dict[str, Any]]:
            async def chunks() -> AsyncIterator[dict[str, Any]]:
                # the gateway always asks the upstream for usage (stream_options.include_usage)
                upstream_body = {**body, "stream_options": {"include_usage": True}}
                async with http.stream("POST", "/chat/completions", json=upstream_body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            yield orjson.loads(line[6:])

            return chunks()

        return run

    live, r1 = await cache.stream(dict(body), ctx, compute())
    live_usage = [c["usage"] for c in [c async for c in live] if not c.get("choices") and c.get("usage")]
    await asyncio.sleep(0.05)  # the pump stores after the last chunk
    replay, r2 = await cache.stream(dict(body), ctx, compute())
    replay_usage = [c["usage"] for c in [c async for c in replay] if not c.get("choices") and c.get("usage")]
    assert (r1, r2) == ("miss", "hit_exact")
    assert len(live_usage) == 1 and live_usage[0]["completion_tokens"] > 0
    assert "estimated" not in live_usage[0]
    assert replay_usage == live_usage


async def test_the_redis_backend_keeps_max_entries(connector, http):
    cache = redis_cache(connector, max_entries=3)
    ctx = CallContext(tenant="acme")
    for i in range(6):
        await ask(cache, http, chat(f"question number {i}"), ctx)
    assert await cache.redis_store.count(connector.client) == 3  # type: ignore[arg-type]
    assert (await ask(cache, http, chat("question number 0"), ctx))[1] == "miss"  # oldest evicted
    assert (await ask(cache, http, chat("question number 5"), ctx))[1] == "hit_exact"


async def test_the_redis_backend_keeps_max_bytes(connector, http):
    cache = redis_cache(connector, max_bytes=4096)
    ctx = CallContext(tenant="acme")
    for i in range(30):
        await ask(cache, http, chat(f"tell me something about topic {i}"), ctx)
    client = connector.client
    assert client is not None
    keys = [k async for k in client.scan_iter(match=f"{connector.prefix}:cache:*:e:*", count=1000)]
    stored = sum([int(await client.strlen(k)) for k in keys])
    assert 0 < stored <= 4096
    assert len(keys) < 30
    assert (await ask(cache, http, chat("tell me something about topic 29"), ctx))[1] == "hit_exact"


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_invalidate_matches_prompts_and_keys_not_model_names(connector, http, backend: str):
    cache = (
        redis_cache(connector)
        if backend == "redis"
        else CacheService(CachePolicySpec.model_validate({"backend": "memory"}))
    )
    ctx = CallContext(tenant="acme")
    await ask(cache, http, chat("How do I reset my password?"), ctx)
    await ask(cache, http, chat("What is my card limit?"), ctx)
    assert await cache.invalidate(pattern="gpt-4o*") == 0  # a model name is not a prompt
    assert await cache.invalidate(pattern="*password*") == 1
    assert (await ask(cache, http, chat("How do I reset my password?"), ctx))[1] == "miss"
    assert (await ask(cache, http, chat("What is my card limit?"), ctx))[1] == "hit_exact"
