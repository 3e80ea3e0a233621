"""Agent-config parse cache benchmark: JSON lines on stdout, a human table on stderr.

    .venv/bin/python -m bench.config [--configs 1000] [--tenants 1000] [--iterations 20000] [--smoke]

Measured, with the runtime's own classes (ParseCache, AgentRegistry, AgentManager):

* hit: `ParseCache.parse` of a definition parsed before (hash of the written form, lookup, bind
  the tenant's id) and `AgentManager.get` of a served agent (the per-request path); p50/p99 of
  single calls timed with perf_counter_ns;
* cold parse: a definition never seen (validation, hash, the guard's rules), no Redis;
* preheat: `AgentRegistry.start()` over N distinct agent definitions, first with an empty Redis
  (parse + persist each) and then as a second pod that finds them in Redis;
* memory: tracemalloc growth for N tenants bound to one template, against N distinct definitions.

The agent definition is a support-bot template written here (a ~2 KB system prompt, 5 skills with
examples, limits). Redis is the one from `hack/services.sh env` (`STRATA_TEST_REDIS_URL`); keys go
under a prefix of their own and are deleted at the end. Without that variable the Redis rows are
skipped (said on stderr). `--smoke`: 50 configs, 50 tenants, 2,000 iterations.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime"))

from bench._stats import percentile  # noqa: E402
from strata_runtime.agents.guard import ConfigGuard  # noqa: E402
from strata_runtime.agents.manager import AgentManager  # noqa: E402
from strata_runtime.agents.parse_cache import ParseCache  # noqa: E402
from strata_runtime.agents.registry import AgentRegistry  # noqa: E402
from strata_runtime.config import RedisStoreConfig, RuntimeConfig  # noqa: E402
from strata_runtime.stores.redis import RedisConnector  # noqa: E402

PROMPT = ("You are the support assistant of an online bicycle shop. Answer questions about orders, "
          "deliveries, returns, warranty and bike sizing. Be brief and friendly; ask for the order number "
          "when you need it; never promise refunds the policy does not allow. ") * 8


def template(variant: int = 0) -> dict[str, Any]:
    skills = [{"name": f"skill{i}", "description": f"handles topic {i} of the shop",
               "keywords": ["order", "delivery", "return", f"k{i}"], "capabilities": ["lookup"],
               "examples": [f"where is my order number {n}?" for n in range(6)],
               "instructions": f"For topic {i}, check the order first.", "version": "3"} for i in range(5)]
    return {"model": "demo", "systemPrompt": PROMPT + (f" Variant {variant}." if variant else ""),
            "skills": skills, "limits": {"maxToolSteps": 6, "maxInteractionsPerSession": 300, "maxDepth": 4}}


def timed_sync(call: Callable[[], object], iterations: int) -> list[float]:
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


async def timed_async(call: Callable[[int], Awaitable[object]], iterations: int) -> list[float]:
    samples = []
    for i in range(iterations):
        start = time.perf_counter_ns()
        await call(i)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def runtime_config(agents: list[dict[str, Any]]) -> RuntimeConfig:
    return RuntimeConfig.model_validate({"auth": {"mode": "none"}, "models": [{"name": "demo", "provider": "demo"}],
                                         "agents": agents})


async def bench_hits(iterations: int) -> list[dict[str, Any]]:
    cache = ParseCache(ConfigGuard())
    raw = {"id": "bot", "tenant": "acme", **template()}
    await cache.parse(raw)
    other = {"id": "bot", "tenant": "globex", **template()}
    hit = timed_sync(lambda: cache.hit_raw(other), iterations)
    registry = AgentRegistry(lambda: runtime_config([raw]), cache)
    manager = AgentManager(registry)
    manager.get("acme", "bot")
    get = timed_sync(lambda: manager.get("acme", "bot"), iterations)
    cold = await timed_async(lambda i: cache.parse({"id": "bot", "tenant": "acme", **template(i + 1)}),
                             max(200, iterations // 20))
    return [
        {"metric": "parse_cache_hit_us", "p50": percentile(hit, 0.5), "p99": percentile(hit, 0.99), "n": len(hit)},
        {"metric": "manager_get_us", "p50": percentile(get, 0.5), "p99": percentile(get, 0.99), "n": len(get)},
        {"metric": "cold_parse_us", "p50": percentile(cold, 0.5), "p99": percentile(cold, 0.99), "n": len(cold)},
    ]


async def bench_preheat(configs: int, redis_url: str | None) -> list[dict[str, Any]]:
    agents = [{"id": f"bot{i}", "tenant": f"tenant{i}", **template(i + 1)} for i in range(configs)]
    config = runtime_config(agents)
    out = []
    start = time.perf_counter()
    local = AgentRegistry(lambda: config, ParseCache(ConfigGuard()))
    await local.start()
    out.append({"metric": "preheat_no_redis_s", "configs": configs, "seconds": time.perf_counter() - start})
    if redis_url is None:
        print("STRATA_TEST_REDIS_URL not set: preheat through Redis skipped", file=sys.stderr)
        return out
    prefix = f"bench-config-{uuid.uuid4().hex[:8]}"
    pods = [RedisConnector(RedisStoreConfig(backend="redis", url=redis_url, key_prefix=prefix), {})
            for _ in range(2)]
    for pod in pods:
        await pod.start()
    try:
        for label, pod in (("preheat_first_pod_s", pods[0]), ("preheat_second_pod_s", pods[1])):
            registry = AgentRegistry(lambda: config, ParseCache(ConfigGuard(), redis=pod))
            start = time.perf_counter()
            await registry.start()
            stats = registry.cache.stats()
            out.append({"metric": label, "configs": configs, "seconds": time.perf_counter() - start,
                        "redis_hits": stats["redis_hits"], "persisted": stats["persisted"]})
    finally:
        client = pods[0].client
        if client is not None:
            keys = [k async for k in client.scan_iter(match=prefix + ":*", count=1000)]
            for i in range(0, len(keys), 500):
                await client.delete(*keys[i:i + 500])
        for pod in pods:
            await pod.close()
    return out


async def bench_memory(tenants: int) -> list[dict[str, Any]]:
    gc.collect()
    tracemalloc.start()
    shared = ParseCache(ConfigGuard())
    base = tracemalloc.get_traced_memory()[0]
    bound = [await shared.parse({"id": "bot", "tenant": f"tenant{i}", **template()}) for i in range(tenants)]
    shared_bytes = tracemalloc.get_traced_memory()[0] - base
    distinct = ParseCache(ConfigGuard())
    base = tracemalloc.get_traced_memory()[0]
    separate = [await distinct.parse({"id": "bot", "tenant": f"tenant{i}", **template(i + 1)})
                for i in range(tenants)]
    distinct_bytes = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len({id(p) for _, p in bound}) == 1 and len({id(p) for _, p in separate}) == tenants
    return [{"metric": "memory_per_tenant_shared_bytes", "tenants": tenants, "parsed_configs": 1,
             "bytes_total": shared_bytes, "bytes_per_tenant": shared_bytes / tenants},
            {"metric": "memory_per_tenant_distinct_bytes", "tenants": tenants, "parsed_configs": tenants,
             "bytes_total": distinct_bytes, "bytes_per_tenant": distinct_bytes / tenants}]


def table(results: list[dict[str, Any]]) -> None:
    """Columns: p50 us, p99 us, calls | seconds, us per config, configs | bytes, bytes per tenant, tenants."""
    print(f"{'metric':34} {'a':>12} {'b':>12} {'n':>8}   (a/b: p50/p99 us | s/us per config | bytes/per tenant)",
          file=sys.stderr)
    for r in results:
        if "p50" in r:
            row = (f"{r['p50']:.2f}", f"{r['p99']:.2f}", r["n"])
        elif "seconds" in r:
            row = (f"{r['seconds']:.3f}", f"{r['seconds'] / r['configs'] * 1e6:.0f}", r["configs"])
        else:
            row = (f"{r['bytes_total']:.0f}", f"{r['bytes_per_tenant']:.0f}", r["tenants"])
        print(f"{r['metric']:34} {row[0]:>12} {row[1]:>12} {row[2]:>8}", file=sys.stderr)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=int, default=1000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.configs, args.tenants, args.iterations = 50, 50, 2000
    redis_url = os.environ.get("STRATA_TEST_REDIS_URL") or None
    results = await bench_hits(args.iterations)
    results += await bench_preheat(args.configs, redis_url)
    results += await bench_memory(args.tenants)
    for r in results:
        print(json.dumps({"bench": "config", **r}))
    table(results)


if __name__ == "__main__":
    asyncio.run(main())
