"""Session memory's chunk writes: one Redis round trip per call, or grouped across sessions.

    .venv/bin/python -m bench.chunk_commit [--sessions 500] [--seconds 5] [--interval-ms 20] [--smoke]

`sessions` producing turns in this process each write one chunk every `interval-ms` (scenario B's
pace: 50 chunks/s) through `RedisSessionStore.flush_chunks`, the way a turn's flusher does (a
call waits for the previous one of its turn). Two modes, interleaved, on the standalone Redis and
on the Redis Cluster of `hack/services.sh env`: `direct` (the flush script called once per
flush: one EVALSHA round trip each, as before) and `grouped` (the store's group commit: calls
made while a batch is in flight leave together in the next pipeline). Figures: flushes done,
round trips per flush (pipelines sent / flushes; direct is 1 by construction), this process's
CPU per flush, and flush latency p50/p99. Keys live under a prefix of their own, deleted after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from bench._stats import percentile
from strata_runtime.memory.l2 import RedisSessionStore


class Direct:
    """The flush script called alone, as `flush_chunks` did before the group commit."""

    def __init__(self, store: RedisSessionStore) -> None:
        self.script = store._flush
        self.batches = 0

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        self.batches += 1
        return await self.script(keys=keys, args=args)


async def run_mode(client: Any, prefix: str, mode: str, *, sessions: int, seconds: float,
                   interval: float) -> dict[str, Any]:
    store = RedisSessionStore(client, prefix)
    if mode == "direct":
        store._flush_group = Direct(store)  # type: ignore[assignment]
    for i in range(sessions):
        await client.hset(store._keys("b", f"s{i}", 1)[3], mapping={"owner": "pod", "state": "producing"})
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds

    async def turn(i: int) -> int:
        await asyncio.sleep(interval * i / sessions)  # spread the starts over one interval
        done = 0
        next_at = time.perf_counter()
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                ok = await store.flush_chunks("b", f"s{i}", 1, owner="pod", start=done, chunks=[f"chunk {done}"],
                                              ttl=60)
            except Exception as e:  # e.g. the pool's connections all in use (a cluster pool does not wait)
                errors.append(type(e).__name__)
                await asyncio.sleep(interval)
                continue
            latencies.append(time.perf_counter() - t0)
            if not ok:
                raise AssertionError(f"flush refused for session s{i}")
            done += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        return done

    cpu0 = time.process_time()
    flushes = sum(await asyncio.gather(*(turn(i) for i in range(sessions))))
    cpu = time.process_time() - cpu0
    batches = store._flush_group.batches
    return {"mode": mode, "sessions": sessions, "flushes": flushes, "round_trips_per_flush": batches / max(1, flushes),
            "cpu_us_per_flush": cpu * 1e6 / max(1, flushes), "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "errors": len(errors), "error_kinds": sorted(set(errors)),
            "loadavg_1m": os.getloadavg()[0]}


async def cleanup(client: Any, prefix: str) -> None:
    if isinstance(client, RedisCluster):
        async for key in client.scan_iter(match=prefix + "*", count=1000, target_nodes=RedisCluster.PRIMARIES):
            await client.delete(key)
    else:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i:i + 500])


async def main(args: argparse.Namespace) -> None:
    urls = {"standalone": os.environ.get("STRATA_TEST_REDIS_URL", ""),
            "cluster": os.environ.get("STRATA_TEST_REDIS_CLUSTER_URL", "")}
    if not all(urls.values()):
        sys.exit("set STRATA_TEST_REDIS_URL and STRATA_TEST_REDIS_CLUSTER_URL (eval \"$(bash hack/services.sh env)\")")
    print(f"{'redis':10} {'mode':8} {'sessions':>8} {'flushes':>8} {'rt/flush':>8} {'cpu us/flush':>12} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'load':>5}", file=sys.stderr)
    for kind, url in urls.items():
        # Pools as the runtime builds them (stores.redis.maxConnections, default 64; per node on a cluster)
        client: Any = (RedisCluster.from_url(url, max_connections=args.max_connections) if kind == "cluster" else
                       Redis.from_pool(BlockingConnectionPool.from_url(url, max_connections=args.max_connections,
                                                                       timeout=2.0)))
        prefix = f"strata-bench-chunks:{uuid.uuid4().hex[:8]}"
        try:
            await (client.initialize() if kind == "cluster" else client.ping())
            for round_ in range(args.rounds):
                for mode in ("direct", "grouped") if round_ % 2 == 0 else ("grouped", "direct"):
                    r = await run_mode(client, f"{prefix}:{mode}{round_}", mode, sessions=args.sessions,
                                       seconds=args.seconds, interval=args.interval_ms / 1000)
                    r["redis"] = kind
                    print(json.dumps({"bench": "chunk_commit", **{k: round(v, 3) if isinstance(v, float) else v
                                                                  for k, v in r.items()}}), flush=True)
                    print(f"{kind:10} {mode:8} {r['sessions']:>8} {r['flushes']:>8} {r['round_trips_per_flush']:>8.3f} "
                          f"{r['cpu_us_per_flush']:>12.1f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['errors']:>6} "
                          f"{r['loadavg_1m']:>5.1f}", file=sys.stderr, flush=True)
        finally:
            try:
                await cleanup(client, prefix)
            finally:
                await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-connections", type=int, default=64, help="the client's pool (per cluster node)")
    parser.add_argument("--smoke", action="store_true", help="20 sessions for 1 s: only that it runs")
    cli = parser.parse_args()
    if cli.smoke:
        cli.sessions, cli.seconds, cli.rounds = 20, 1.0, 1
    try:
        import uvloop

        uvloop.run(main(cli))
    except ImportError:
        asyncio.run(main(cli))
