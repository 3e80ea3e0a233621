"""Memory soak: mixed bounded conversation load on a real runtime process for 10 minutes, with
two Redis outages (SIGKILL, restart from its append-only file), sampling RSS, open file
descriptors, pooled Redis connections and Redis memory; then an audit of every acknowledged turn.

Load: busy clients (a turn as soon as the last is done) and slow clients (a few seconds of think
time, longer than `sessionIdleSeconds`, so their sessions are released to Postgres and reloaded).
Stores: its own redis-server (tests/support/stores.py) and the shared Postgres of
`hack/services.sh` (never restarted; rows under this run's session ids only).

    .venv/bin/python -m bench.memory_soak [--minutes 10] [--clients 16] [--smoke] [--no-long-term]
        [--vector-rows 1000] [--resume-window 300] [--keep]

Prints one JSON object per sample and a final table comparing the third sample (after warm-up)
with the end (3 s after the load stopped). Exits non-zero when the audit fails (an acknowledged
turn missing, duplicated, out of order or cut short) or a client saw an unexpected answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.drill import Load, Outcome, audit, drill_config, start_runtimes
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess
from tests.support.stores import RedisServer, redis_cli


def sample(runtime: RuntimeProcess, redis: RedisServer, pool: dict[str, Any], phase: str, t0: float) -> dict[str, Any]:
    assert runtime.process is not None
    pid = runtime.process.pid
    rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    used = redis_cli(redis.port, "info", "memory")
    redis_bytes = next((int(line.split(":")[1]) for line in used.splitlines() if line.startswith("used_memory:")), -1)
    clients = redis_cli(redis.port, "info", "clients")
    connected = next((int(line.split(":")[1]) for line in clients.splitlines()
                      if line.startswith("connected_clients:")), -1)
    return {"t": round(time.monotonic() - t0, 1), "phase": phase, "rss_mb": round(rss_kb / 1024, 1),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "redis_clients": connected,
            "pool_in_use": pool.get("inUse", -1), "pool_idle": pool.get("idle", -1),
            "redis_used_mb": round(redis_bytes / 1e6, 2)}


async def pool_of(runtime: RuntimeProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            body = (await http.get(f"{runtime.base_url}/readyz")).json()
        except (httpx.HTTPError, ValueError):
            return {}
    pool: dict[str, Any] = body.get("backends", {}).get("redis", {}).get("pool", {})
    return pool


async def soak(args: argparse.Namespace, workdir: Path) -> int:
    duration = args.minutes * 60
    outage = 1.5 if args.smoke else 4.0
    every = 2.0 if args.smoke else 10.0
    redis = RedisServer(workdir).start()
    upstream = UpstreamServer().start()
    upstream.control(chunks=4, chunk_delay_ms=20)
    dsn = os.environ.get("STRATA_TEST_POSTGRES_DSN")
    if not dsn:
        print("needs the hack/services.sh env (STRATA_TEST_POSTGRES_DSN)", file=sys.stderr)
        return 2
    # resumeWindowSeconds: how long finished answers' stream records stay in Redis, so Redis memory
    # levels off at (turns/s x window); a window shorter than the run shows that level within it.
    memory: dict[str, Any] = {"sessionIdleSeconds": 2, "resumeWindowSeconds": args.resume_window}
    if args.no_long_term:
        memory["longTerm"] = {"enabled": False}
    config = drill_config(workdir, upstream, redis_url=redis.url, memory=memory)
    # The in-process vector index holds every long-term row in the runtime: bounded so that the run
    # reaches its steady state (at ~5 archived batches a second, 1,000 rows within minutes).
    config["stores"]["vectors"]["memoryMaxRows"] = args.vector_rows
    # Busy sessions run to thousands of turns: the per-session turn bound (200 by default) would end them early.
    config["agents"][0]["limits"] = {"maxInteractionsPerSession": 1_000_000}
    runtime = start_runtimes(config, workdir, 1, {"STRATA_TEST_POSTGRES_DSN": dsn})[0]
    busy = Load([runtime.base_url], clients=max(1, args.clients // 2))
    slow = Load([runtime.base_url], clients=max(1, args.clients - args.clients // 2), think_seconds=4.0)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()

    async def sampler(stop: asyncio.Event) -> None:
        while not stop.is_set():
            s = sample(runtime, redis, await pool_of(runtime), "load", t0)
            samples.append(s)
            print(json.dumps(s), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def outages() -> None:
        for k in (1, 2):
            await asyncio.sleep(max(0.0, t0 + duration * k / 3 - time.monotonic()))
            redis.kill()
            print(json.dumps({"t": round(time.monotonic() - t0, 1), "event": "redis SIGKILL"}), flush=True)
            await asyncio.sleep(outage)
            await asyncio.to_thread(redis.start)
            print(json.dumps({"t": round(time.monotonic() - t0, 1), "event": "redis restarted"}), flush=True)

    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(stop))
    try:
        outcomes: list[Outcome] = list(await asyncio.gather(busy.run(duration), slow.run(duration), outages()))[:2]
        stop.set()
        await sampling
        await asyncio.sleep(3.0)  # let pools drain and released sessions spill
        end = sample(runtime, redis, await pool_of(runtime), "end", t0)
        print(json.dumps(end), flush=True)
        acked = [a for o in outcomes for a in o.acked]
        checked = await audit(runtime.base_url, acked)
        result = {"acknowledged": len(acked), "completed": sum(o.completed for o in outcomes),
                  "refused_503": sum(o.refused for o in outcomes),
                  "unexpected": sum(len(o.unexpected) for o in outcomes), **checked}
        print(json.dumps({"result": result}), flush=True)
        warm = samples[min(len(samples) - 1, 2)]
        print_table(warm, end, result)
        problems = [u for o in outcomes for u in o.unexpected]
        if problems:
            print("unexpected:", problems[:5], file=sys.stderr)
            return 1
        return 0
    finally:
        stop.set()
        await busy.close()
        await slow.close()
        runtime.stop()
        redis.stop()
        upstream.stop()


def print_table(warm: dict[str, Any], end: dict[str, Any], result: dict[str, Any]) -> None:
    print(f"{'figure':<22} {'after warm-up':>14} {'end':>10}")
    for key in ("rss_mb", "fds", "redis_clients", "pool_in_use", "pool_idle", "redis_used_mb"):
        print(f"{key:<22} {warm[key]:>14} {end[key]:>10}")
    print(f"{'turns acknowledged':<22} {result['acknowledged']:>14} {result['completed']:>10}")
    print(f"{'refused (503)':<22} {result['refused_503']:>14} {result['unexpected']:>10}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="20 s, 6 clients, two 1.5 s outages")
    parser.add_argument("--vector-rows", type=int, default=1000,
                        help="stores.vectors.memoryMaxRows of the runtime (its in-process vector index)")
    parser.add_argument("--resume-window", type=int, default=300,
                        help="memory.resumeWindowSeconds of the runtime (the default is 300 s)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (runtime and Redis logs)")
    parser.add_argument("--no-long-term", action="store_true",
                        help="long-term memory off (no summaries kept in the in-process vector store)")
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.clients = 20 / 60, 6
    if args.keep:
        workdir = Path(tempfile.mkdtemp(prefix="strata-soak-"))
        print(json.dumps({"workdir": str(workdir)}), flush=True)
        return asyncio.run(soak(args, workdir))
    with tempfile.TemporaryDirectory(prefix="strata-soak-") as tmp:
        return asyncio.run(soak(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
