"""Rate limits and usage on real Redis (standalone and a 3-master Cluster), under concurrency."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import pytest

from strata_runtime.errors import RateLimited
from strata_runtime.gateway.contract import CallContext
from strata_runtime.usage import UsageQuery
from tests.integration._gateway_helpers import chat, close_gateway, make_gateway, model
from tests.support.fixtures import UpstreamServer

REDIS = pytest.mark.parametrize("redis", ["standalone", "cluster", "memory"])


def today() -> dt.date:
    """Read when needed, never at import: a suite that runs across midnight (UTC) records usage on the new day."""
    return dt.datetime.now(dt.UTC).date()


def _tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]  # fresh buckets and usage rows per test run


@REDIS
async def test_parallel_requests_never_spend_more_than_the_token_budget(openai_upstream: UpstreamServer,
                                                                         redis: str) -> None:
    budget = 600
    gateway = await make_gateway([model("primary", openai_upstream.base_url)], redis=redis, prefix=_tenant(),
                                 rateLimits={"perTenant": {"tpm": budget}})
    tenant = _tenant()
    ctx = CallContext(tenant=tenant, agent_id="support")
    spent = 0

    async def one(i: int) -> None:
        nonlocal spent
        try:
            result = await gateway.complete(chat(f"count the tokens of request {i} please", max_tokens=20), ctx)
        except RateLimited:
            return
        spent += result.response["usage"]["total_tokens"]

    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(*(one(i) for i in range(60)), return_exceptions=True)
        elapsed = time.monotonic() - started
        assert not [o for o in outcomes if isinstance(o, BaseException)]
        refill = budget * elapsed / 60.0  # the bucket refills continuously while the test runs
        assert 0 < spent <= budget + refill
        stats = await openai_upstream.astats()
        assert stats["by_path"]["/v1/chat/completions"] < 60  # some were refused before the upstream
    finally:
        await close_gateway(gateway)


@REDIS
async def test_a_tenant_over_its_request_limit_gets_429_with_retry_after(openai_upstream: UpstreamServer,
                                                                         redis: str) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url)], redis=redis,
                                 rateLimits={"perAgent": {"rpm": 3}})
    ctx = CallContext(tenant=_tenant(), agent_id="bot")
    try:
        for _ in range(3):
            await gateway.complete(chat(), ctx)
        with pytest.raises(RateLimited) as info:
            await gateway.complete(chat(), ctx)
        assert int(info.value.headers()["Retry-After"]) in range(1, 22)
        assert info.value.details == {"scope": "agent", "limit": "rpm"}
        # Another agent of the same tenant has its own budget.
        await gateway.complete(chat(), CallContext(tenant=ctx.tenant, agent_id="other-bot"))
    finally:
        await close_gateway(gateway)


async def test_two_gateways_on_one_redis_share_the_budget(openai_upstream: UpstreamServer) -> None:
    prefix = _tenant()
    limits = {"perTenant": {"rpm": 4}}
    a = await make_gateway([model("primary", openai_upstream.base_url)], redis="cluster", prefix=prefix,
                           rateLimits=limits)
    b = await make_gateway([model("primary", openai_upstream.base_url)], redis="cluster", prefix=prefix,
                           rateLimits=limits)
    ctx = CallContext(tenant=_tenant())
    try:
        results = await asyncio.gather(*(g.complete(chat(), ctx) for g in (a, b) * 4), return_exceptions=True)
        assert sum(not isinstance(r, BaseException) for r in results) == 4
        assert all(isinstance(r, RateLimited) for r in results if isinstance(r, BaseException))
    finally:
        await close_gateway(a)
        await close_gateway(b)


@REDIS
async def test_usage_after_a_run_equals_the_sum_of_the_upstream_usage_blocks(openai_upstream: UpstreamServer,
                                                                             redis: str) -> None:
    prefix = _tenant()
    gateway = await make_gateway(
        [model("primary", openai_upstream.base_url, pricing={"inputPer1M": 1.0, "outputPer1M": 2.0})],
        redis=redis, prefix=prefix)
    tenant = _tenant()
    first_day = today()
    try:
        async def plain(i: int) -> None:
            await gateway.complete(chat(" ".join(["word"] * (i % 7 + 1))), CallContext(tenant, "a1"))

        async def streamed(i: int) -> None:
            include = i % 2 == 0
            body = chat(f"stream number {i}", stream=True, stream_options={"include_usage": include})
            stream = await gateway.stream(body, CallContext(tenant, "a2"))
            _ = [c async for c in stream.chunks]

        await asyncio.gather(*(plain(i) for i in range(25)), *(streamed(i) for i in range(15)))
        await gateway.close()  # flushes the write-behind usage
        upstream = (await openai_upstream.astats())["usage"]
        reopened = await make_gateway([model("primary", openai_upstream.base_url)], redis=redis, prefix=prefix)
        if redis == "memory":
            reopened = gateway  # the in-memory table lives in the original process object
        report = await reopened.usage.query(UsageQuery(start=first_day, end=today(), tenant=tenant))
        totals = report["totals"]
        assert totals["requests"] == 40
        assert totals["prompt_tokens"] == upstream["prompt_tokens"]
        assert totals["completion_tokens"] == upstream["completion_tokens"]
        expected_cost = (upstream["prompt_tokens"] * 1.0 + upstream["completion_tokens"] * 2.0) / 1e6
        assert totals["cost"] == pytest.approx(expected_cost, rel=1e-9)
        by_agent = {item["agent"]: item["requests"] for item in report["items"]}
        assert by_agent == {"a1": 25, "a2": 15}
        if reopened is not gateway:
            await close_gateway(reopened)
    finally:
        await gateway._test_redis.close()  # type: ignore[attr-defined]


async def test_one_tenants_usage_query_never_includes_another_tenant(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url)], redis="standalone",
                                 prefix=_tenant())
    a, b = _tenant(), _tenant()
    first_day = today()
    try:
        await gateway.complete(chat(), CallContext(a))
        await gateway.complete(chat(), CallContext(b))
        await gateway.complete(chat(), CallContext(b))
        report = await gateway.usage.query(UsageQuery(start=first_day, end=today(), tenant=a))
        assert report["totals"]["requests"] == 1
        assert {item["tenant"] for item in report["items"]} == {a}
    finally:
        await close_gateway(gateway)


async def test_usage_keys_are_per_day_hashes_with_a_ttl(openai_upstream: UpstreamServer) -> None:
    prefix = _tenant()
    gateway = await make_gateway([model("primary", openai_upstream.base_url)], redis="standalone", prefix=prefix,
                                 usage={"ttlDays": 3})
    day = today()
    try:
        await gateway.complete(chat(), CallContext("acme", "support"))
        await gateway.usage.flush()
        client = gateway._test_redis.client  # type: ignore[attr-defined]
        key = f"{prefix}:usage:{day.isoformat()}"
        if not await client.exists(key):  # midnight (UTC) came between the request and the line above
            key = f"{prefix}:usage:{today().isoformat()}"
        fields = await client.hgetall(key)
        assert fields[b"acme:support:primary:requests"] == b"1"
        assert 2 * 86400 < await client.ttl(key) <= 3 * 86400
    finally:
        await close_gateway(gateway)
