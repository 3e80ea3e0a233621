"""The response cache against real components: the upstream process, real Redis, the local embedder."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from strata_runtime.cache.service import CacheService
from strata_runtime.config import CachePolicySpec, EmbedderConfig, RedisStoreConfig
from strata_runtime.embeddings import LocalEmbedder, LocalMiniLMEmbedder
from strata_runtime.gateway.contract import CallContext
from strata_runtime.stores.redis import RedisConnector
from tests.support.redis_faults import close_transport_under

A, B = CallContext(tenant="acme"), CallContext(tenant="globex")
SYSTEM = {"role": "system", "content": "You are a banking assistant."}


def chat(text: str, *, system: dict | None = SYSTEM, history: list | None = None, **extra: Any) -> dict:
    messages = ([system] if system else []) + (history or []) + [{"role": "user", "content": text}]
    return {"model": "gpt-4o-mini", "messages": messages, "temperature": 0, **extra}


class Upstream:
    """compute / compute_stream callables that really call the upstream process."""

    def __init__(self, base_url: str):
        self.client = httpx.AsyncClient(base_url=base_url, timeout=30)

    def compute(self, body: dict):
        async def run() -> dict:
            response = await self.client.post("/chat/completions", json={**body, "stream": False})
            response.raise_for_status()
            return dict(response.json())
        return run

    def compute_stream(self, body: dict):
        async def run() -> AsyncIterator[dict]:
            async def chunks() -> AsyncIterator[dict]:
                async with self.client.stream("POST", "/chat/completions", json={**body, "stream": True}) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            yield orjson.loads(line[6:])
            return chunks()
        return run


@pytest.fixture(scope="module")
async def embedder():
    e = LocalMiniLMEmbedder(timeout_seconds=30)
    await e.start()
    yield e
    await e.close()


@pytest.fixture
async def upstream(openai_upstream):
    u = Upstream(openai_upstream.base_url)
    yield u
    await u.client.aclose()


def policy(**kw: Any) -> CachePolicySpec:
    base: dict[str, Any] = {"backend": "memory", "semantic": {"threshold": 0.8}}
    base.update(kw)
    return CachePolicySpec.model_validate(base)


async def ask(cache: CacheService, upstream: Upstream, body: dict, ctx: CallContext = A) -> tuple[dict, str]:
    body = dict(body)
    return await cache.complete(body, ctx, upstream.compute(body))


async def test_exact_repeat_is_served_from_the_cache(embedder, upstream, openai_upstream):
    cache = CacheService(policy(), embedder=embedder)
    first, r1 = await ask(cache, upstream, chat("How do I reset my password?"))
    second, r2 = await ask(cache, upstream, chat("How do I reset my password?"))
    assert (r1, r2) == ("miss", "hit_exact")
    assert second["choices"] == first["choices"]
    assert openai_upstream.stats()["by_path"]["/v1/chat/completions"] == 1
    stats = await cache.snapshot()
    assert stats["hits"]["exact"] == 1 and stats["saved"]["total_tokens"] == first["usage"]["total_tokens"]


async def test_paraphrase_is_a_semantic_hit(embedder, upstream):
    cache = CacheService(policy(), embedder=embedder)
    await ask(cache, upstream, chat("How do I reset my password?"))
    _, result = await ask(cache, upstream, chat("How can I reset my password?"))
    assert result == "hit_semantic"


async def test_tenant_a_never_hits_tenant_b_entry_even_for_identical_text(embedder, upstream):
    cache = CacheService(policy(), embedder=embedder)
    await ask(cache, upstream, chat("How do I reset my password?"), A)
    _, exact = await ask(cache, upstream, chat("How do I reset my password?"), B)
    _, semantic = await ask(cache, upstream, chat("How can I reset my password?"), CallContext(tenant="initech"))
    assert (exact, semantic) == ("miss", "miss")


async def test_a_different_system_prompt_or_earlier_conversation_never_hits(embedder, upstream):
    cache = CacheService(policy(), embedder=embedder)
    await ask(cache, upstream, chat("How do I reset my password?"))
    _, other_system = await ask(cache, upstream, chat("How do I reset my password?",
                                                      system={"role": "system", "content": "You are a pirate."}))
    history = [{"role": "user", "content": "I use the mobile app"}, {"role": "assistant", "content": "ok"}]
    _, other_history = await ask(cache, upstream, chat("How do I reset my password?", history=history))
    _, paraphrase_other_history = await ask(cache, upstream, chat("How can I reset my password?", history=history[:1]))
    assert (other_system, other_history, paraphrase_other_history) == ("miss", "miss", "miss")


@pytest.mark.parametrize(("stored", "asked"), [
    ("What is 2+3?", "What is 2+4?"),
    ("How do I enable 2FA on my account?", "How do I disable 2FA on my account?"),
    ("What is the weather in Paris today?", "What is the weather in London today?"),
    # same words, roles swapped: only the moved-word check sees these without a verifier
    ("Show me flights from Paris to Rome", "Show me flights from Rome to Paris"),
    ("Transfer money from savings to checking", "Transfer money from checking to savings"),
    ("Does the dog chase the cat?", "Does the cat chase the dog?"),
])
async def test_guard_cases_miss(embedder, upstream, stored: str, asked: str):
    cache = CacheService(policy(semantic={"threshold": 0.5}), embedder=embedder)
    await ask(cache, upstream, chat(stored))
    _, result = await ask(cache, upstream, chat(asked))
    assert result == "miss"
    assert sum((await cache.snapshot())["semantic"]["guard_rejections"].values()) >= 1


async def test_hot_requests_skip_the_semantic_cache(embedder, upstream):
    cache = CacheService(policy(), embedder=embedder)
    await ask(cache, upstream, chat("How do I reset my password?", temperature=0.7))
    _, result = await ask(cache, upstream, chat("How can I reset my password?", temperature=0.7))
    assert result == "miss"


async def test_tool_call_answers_are_cached_with_their_tool_calls(embedder, upstream):
    cache = CacheService(policy(), embedder=embedder)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}}]
    body = chat('call tool lookup {"id": "42"}', tools=tools)
    first, _ = await ask(cache, upstream, body)
    second, result = await ask(cache, upstream, body)
    _, other_choice = await ask(cache, upstream, {**body, "tool_choice": "none"})
    assert result == "hit_exact" and other_choice == "miss"
    assert second["choices"][0]["message"]["tool_calls"] == first["choices"][0]["message"]["tool_calls"]


async def test_a_cached_stream_replays_the_same_chunks(embedder, upstream, openai_upstream):
    cache = CacheService(policy(), embedder=embedder)
    body = chat("Tell me about savings accounts please", stream=True, stream_options={"include_usage": True})
    live, r1 = await cache.stream(dict(body), A, upstream.compute_stream(body))
    live_chunks = [c async for c in live]
    await asyncio.sleep(0.05)  # the pump stores after the last chunk
    replay, r2 = await cache.stream(dict(body), A, upstream.compute_stream(body))
    replay_chunks = [c async for c in replay]
    assert (r1, r2) == ("miss", "hit_exact")
    assert b"".join(orjson.dumps(c) for c in replay_chunks) == b"".join(orjson.dumps(c) for c in live_chunks)
    assert live_chunks[-1]["usage"] is not None
    plain, r3 = await ask(cache, upstream, chat("Tell me about savings accounts please"))
    assert r3 == "hit_exact"
    assert plain["choices"][0]["message"]["content"] == "".join(
        c["choices"][0]["delta"].get("content") or "" for c in live_chunks if c["choices"])
    assert openai_upstream.stats()["by_path"]["/v1/chat/completions"] == 1


async def test_fifty_concurrent_identical_misses_make_one_upstream_call(embedder, upstream, openai_upstream):
    cache = CacheService(policy(), embedder=embedder)
    openai_upstream.control(latency_ms=200)
    results = await asyncio.gather(*(ask(cache, upstream, chat("What are your opening hours?")) for _ in range(50)))
    assert openai_upstream.stats()["by_path"]["/v1/chat/completions"] == 1
    assert len({r[0]["choices"][0]["message"]["content"] for r in results}) == 1
    assert [r[1] for r in results].count("miss") == 1


async def test_fifty_concurrent_identical_streams_make_one_upstream_call(embedder, upstream, openai_upstream):
    cache = CacheService(policy(), embedder=embedder)
    openai_upstream.control(chunk_delay_ms=5)
    body = chat("Explain overdraft fees", stream=True)

    async def one() -> str:
        chunks, _ = await cache.stream(dict(body), A, upstream.compute_stream(body))
        return "".join([c["choices"][0]["delta"].get("content") or "" async for c in chunks if c["choices"]])

    texts = await asyncio.gather(*(one() for _ in range(50)))
    assert openai_upstream.stats()["by_path"]["/v1/chat/completions"] == 1
    assert len(set(texts)) == 1 and texts[0]


async def test_request_controls_only_tighten(embedder, upstream):
    cache = CacheService(policy(), embedder=embedder)
    body = chat("What is my card limit?", cache={"no-store": True})
    _, r1 = await ask(cache, upstream, body)
    _, r2 = await ask(cache, upstream, chat("What is my card limit?"))
    _, r3 = await ask(cache, upstream, chat("What is my card limit?", cache={"no-cache": True}))
    assert (r1, r2, r3) == ("miss", "miss", "miss")


async def test_caching_disabled_agent_never_reads_or_writes(embedder, upstream):
    cache = CacheService(policy(), embedder=embedder)
    off = CallContext(tenant="acme", caching_disabled=True)
    _, r1 = await ask(cache, upstream, chat("hello there"), off)
    _, r2 = await ask(cache, upstream, chat("hello there"), A)
    assert (r1, r2) == ("disabled", "miss")


async def test_invalidate_by_tenant_and_by_prompt_pattern(embedder, upstream):
    cache = CacheService(policy(), embedder=embedder)
    await ask(cache, upstream, chat("q1"), A)
    await ask(cache, upstream, chat("q1"), B)
    assert await cache.invalidate(tenant="acme") == 1
    assert (await ask(cache, upstream, chat("q1"), B))[1] == "hit_exact"
    assert await cache.invalidate(pattern="q*") == 1
    assert (await ask(cache, upstream, chat("q1"), B))[1] == "miss"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(port: int, workdir: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


async def test_redis_down_degrades_to_memory_and_comes_back(embedder, upstream):
    port = _free_port()
    workdir = tempfile.mkdtemp()
    proc = _start_redis(port, workdir)
    connector = RedisConnector(RedisStoreConfig(backend="auto", url=f"redis://127.0.0.1:{port}/0",
                                                recover_interval_seconds=0.2, socket_timeout_seconds=0.5,
                                                connect_timeout_seconds=0.5), os.environ)
    await connector.start()
    cache = CacheService(policy(backend="auto"), redis=connector, embedder=embedder)
    try:
        await ask(cache, upstream, chat("redis question"))
        assert (await cache.snapshot())["backend"] == "redis"
        assert (await ask(cache, upstream, chat("redis question")))[1] == "hit_exact"
        proc.terminate()
        proc.wait(10)
        _, during = await ask(cache, upstream, chat("asked while redis is down"))
        assert during == "miss" and connector.health.state == "degraded"
        assert (await ask(cache, upstream, chat("asked while redis is down")))[1] == "hit_exact"  # from memory
        assert (await cache.snapshot())["backend"] == "memory"
        proc = _start_redis(port, workdir)
        for _ in range(100):
            if connector.health.state == "ok":
                break
            await asyncio.sleep(0.1)
        assert connector.health.state == "ok"
        _, back = await ask(cache, upstream, chat("asked after recovery"))
        assert (await cache.snapshot())["backend"] == "redis"
        assert back == "miss" and (await ask(cache, upstream, chat("asked after recovery")))[1] == "hit_exact"
        client = connector.client
        assert client is not None and await client.dbsize() >= 1
    finally:
        await connector.close()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_a_connection_closed_under_a_write_degrades_to_memory_instead_of_failing(
        embedder, upstream, redis_url: str, key_prefix: str, redis_client) -> None:
    """redis-py raises uvloop's RuntimeError (or an AttributeError) from its own write when another
    task closed the connection under it (a Cluster failover): the cache takes it for an outage of
    the store, as it does the client's own errors, not for a bug to answer 500 with. (`redis_client`
    deletes the keys under `key_prefix` afterwards.)"""
    config = RedisStoreConfig(backend="redis", url=redis_url, key_prefix=key_prefix.rstrip(":"))
    connector = RedisConnector(config, os.environ)
    await connector.start()
    cache = CacheService(policy(backend="redis"), redis=connector, embedder=embedder)
    try:
        await ask(cache, upstream, chat("closed transport question"))
        client = connector.client
        assert client is not None
        pooled = list(client.connection_pool._available_connections)
        assert pooled, "the lookup left no connection in the pool"
        for connection in pooled:
            close_transport_under(connection)
        answer, kind = await ask(cache, upstream, chat("closed transport question"))
        assert kind == "miss" and answer["choices"][0]["message"]["content"]
        assert cache.stats.backend_errors == 1
        # the client opens a new connection: the next answers are stored in and served from Redis
        assert (await ask(cache, upstream, chat("What is the daily ATM withdrawal limit?")))[1] == "miss"
        assert (await ask(cache, upstream, chat("What is the daily ATM withdrawal limit?")))[1] == "hit_exact"
        assert (await cache.snapshot())["backend"] == "redis" and cache.stats.backend_errors == 1
    finally:
        await connector.close()


@pytest.mark.parametrize("env_name", ["STRATA_TEST_REDIS_URL", "STRATA_TEST_REDIS_CLUSTER_URL"])
async def test_redis_backend_shares_entries_between_pods_and_keeps_tenants_apart(
        embedder, upstream, openai_upstream, env_name: str):
    url = os.environ.get(env_name)
    if not url:
        pytest.fail(f"{env_name} not set (run: eval \"$(bash hack/services.sh env)\")")
    cluster = "CLUSTER" in env_name
    prefix = f"test{os.getpid()}{int(time.time() * 1000) % 100000}"
    config = RedisStoreConfig(backend="redis", url=url, cluster=cluster, key_prefix=prefix)
    pods = [RedisConnector(config, os.environ) for _ in range(2)]
    for c in pods:
        await c.start()
    caches = [CacheService(policy(backend="redis"), redis=c, embedder=embedder) for c in pods]
    try:
        await ask(caches[0], upstream, chat("How do I reset my password?"))
        assert (await ask(caches[1], upstream, chat("How do I reset my password?")))[1] == "hit_exact"
        assert (await ask(caches[1], upstream, chat("How can I reset my password?")))[1] == "hit_semantic"
        assert (await ask(caches[1], upstream, chat("How do I reset my password?"), B))[1] == "miss"
        openai_upstream.control(latency_ms=300)
        before = openai_upstream.stats()["by_path"]["/v1/chat/completions"]
        body = chat("cross pod single flight")
        results = await asyncio.gather(*(ask(caches[i % 2], upstream, body) for i in range(10)))
        assert openai_upstream.stats()["by_path"]["/v1/chat/completions"] - before == 1
        assert [r[1] for r in results].count("miss") == 1
        assert await caches[0].invalidate(tenant="acme") >= 2
    finally:
        for c in pods:
            await c.close()


# A pasted document followed by a question: the embedder reads a text's first 2,000 characters and the
# verifier its first 96 tokens, so two such prompts with other questions at the end looked identical.
DOCUMENT = " ".join(f"Clause {i}: the tenant pays the rent on the first day of each month by bank transfer."
                    for i in range(40))


@pytest.mark.parametrize("model", ["multilingual-e5-small", "bge-small-en-v1.5+multilingual-e5-small"])
async def test_long_prompts_that_share_their_beginning_are_never_a_semantic_hit(upstream, openai_upstream,
                                                                               model: str):
    embedder = LocalEmbedder(model=model, timeout_seconds=60)
    await embedder.start()
    try:
        cache = CacheService(CachePolicySpec.model_validate({"backend": "memory"}), embedder=embedder)
        first = await ask(cache, upstream, chat(f"{DOCUMENT}\n\nWho pays the rent?"))
        second = await ask(cache, upstream, chat(f"{DOCUMENT}\n\nCan the landlord end the lease early?"))
        again = await ask(cache, upstream, chat(f"{DOCUMENT}\n\nWho pays the rent?"))
    finally:
        await embedder.close()
    assert (first[1], second[1], again[1]) == ("miss", "miss", "hit_exact")  # long prompts: exact match only
    assert openai_upstream.stats()["by_path"]["/v1/chat/completions"] == 2


@pytest.fixture(scope="module")
async def default_embedder():
    e = LocalEmbedder(model=EmbedderConfig().model, timeout_seconds=60)  # the runtime's default model
    await e.start()
    yield e
    await e.close()


# Chinese questions with the default embedder and its fitted verifier: the same question with other
# particles or a light word is a semantic hit, one changed number or a real negation is not.
@pytest.mark.parametrize(("stored", "asked", "result"), [
    ("蚂蚁的牙齿是什么颜色的？", "蚂蚁的牙齿是什么颜色的啊", "hit_semantic"),  # noqa: RUF001  a particle
    ("上海应用技术学院怎么样？", "请问上海应用技术学院如何", "hit_semantic"),  # noqa: RUF001  courtesy, 如何
    ("四川商务职业学院好不好", "四川商务职业学院好不好呀", "hit_semantic"),  # A-not-A is no negation
    ("七朵玫瑰是什么意思", "九朵玫瑰是什么意思啊", "miss"),  # another number
    ("我的卡被拒绝了吗", "我的卡没有被拒绝吧", "miss"),  # a real negation
])
async def test_chinese_questions_through_the_cache(default_embedder, upstream, stored: str, asked: str,
                                                   result: str) -> None:
    cache = CacheService(policy(semantic={}), embedder=default_embedder)
    assert (await ask(cache, upstream, chat(stored)))[1] == "miss"
    assert (await ask(cache, upstream, chat(asked)))[1] == result
