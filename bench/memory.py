"""Memory benchmark: per-turn memory overhead (L1 hit vs L2 load), restore after a kill, archive
throughput, recall latency at 10k/100k memories. Prints JSON lines, then a table.

Runs in-process against real Redis (STRATA_TEST_REDIS_URL, from `hack/services.sh env`) and SQLite;
the LLM is not part of these numbers (the memory path is measured around it).

    .venv/bin/python -m bench.memory [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bench._hashing_embedder import HashingEmbedder
from bench._stats import percentile
from strata_runtime.config import MemoryConfig, RedisStoreConfig, SqlStoreConfig, VectorStoreConfig
from strata_runtime.gateway.contract import CallContext, ChatResult
from strata_runtime.memory.engine import MemoryEngine
from strata_runtime.memory.l3 import LongTermMemory
from strata_runtime.memory.retrieval import build_messages
from strata_runtime.memory.spill import SpillStore
from strata_runtime.stores.redis import RedisConnector
from strata_runtime.stores.sql import SqlConnector
from strata_runtime.stores.vectors import VectorConnector, VectorRow


class SummaryGateway:
    """Returns a fixed summary so archive throughput measures the memory path only."""

    async def complete(self, body: dict[str, Any], ctx: CallContext) -> ChatResult:
        return ChatResult({"choices": [{"message": {"content": "summary of the batch"}}]}, "bench", "bench", "bypass")

    async def stream(self, body: dict[str, Any], ctx: CallContext) -> Any:
        raise RuntimeError("the memory benchmark archives without streaming")


async def one_turn(engine: MemoryEngine, tenant: str, sid: str, i: int, owner: str) -> None:
    state = await engine.session(tenant, sid, "support")
    messages = build_messages(system_prompt="Be brief.", state=state, recalled=[], message=f"q{i}", max_recent=20)
    turn = await engine.append_user(state, f"q{i}", uuid.uuid4().hex, prompt=json.dumps(messages).encode(),
                                    model="m", owner=owner)
    assert turn is not None
    seq = turn.seq + 1
    assert await engine.flush_chunks(state, seq, owner=owner, start=0, chunks=["answer"])
    assert await engine.complete(state, seq, "answer", owner=owner) is not None


def timed_ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def latency_row(bench: str, lat: list[float], **extra: Any) -> dict[str, Any]:
    return {"bench": bench, "n": len(lat), "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99), **extra}


async def bench_turns(engine: MemoryEngine, sids: list[str]) -> list[dict[str, Any]]:
    """Per-turn overhead, L1 hit vs L2 load (sessions pre-warmed with 6 turns), and the L1-hit
    cost that is not a durability write (load + prompt build: no network I/O at all)."""
    for s in sids:
        for k in range(3):
            await one_turn(engine, "t", s, k, "p")
    results = []
    for label, clear in (("turn_overhead_l1_hit", False), ("turn_overhead_l2_load", True)):
        lat = []
        for i, s in enumerate(sids):
            if clear:
                engine.l1.pop("t", s)
            t0 = time.perf_counter()
            await one_turn(engine, "t", s, 100 + i, "p")
            lat.append(timed_ms(t0))
        results.append(latency_row(label, lat))
    lat = []
    for s in sids:
        t0 = time.perf_counter()
        st = await engine.session("t", s, "support")
        build_messages(system_prompt="Be brief.", state=st, recalled=[], message="x", max_recent=20)
        lat.append(timed_ms(t0))
    results.append(latency_row("l1_hit_load_and_prompt", lat))
    return results


async def bench_restore(fresh: MemoryEngine, sids: list[str]) -> dict[str, Any]:
    """Restore after a kill: a fresh engine (empty L1, as in a new pod) loads each session from L2."""
    lat = []
    for s in sids:
        t0 = time.perf_counter()
        st = await fresh.session("t", s, "support")
        lat.append(timed_ms(t0))
        assert len(st.buffered()) >= 8
    return latency_row("restore_after_kill", lat)


async def bench_archive(engine: MemoryEngine, archived: int) -> dict[str, Any]:
    """Archive throughput (10-turn batches: summary (fixed) + embed + upsert + SQL + L2 trim)."""
    asids = [f"a{i}" for i in range(archived)]
    for s in asids:
        for k in range(5):
            await one_turn(engine, "t", s, k, "p")
    gw = SummaryGateway()
    t0 = time.perf_counter()
    for s in asids:
        st = await engine.session("t", s, "support")
        assert await engine.archive(st, gw, "m", CallContext(tenant="t", agent_id="support"))
    dt = time.perf_counter() - t0
    return {"bench": "archive_throughput", "batches": len(asids), "per_s": len(asids) / dt,
            "p50_ms": dt / len(asids) * 1000}


async def bench_recall(vectors: VectorConnector, embedder: HashingEmbedder, size: int) -> dict[str, Any]:
    """Recall latency over `size` memories (in-process vector index; the caller limits BLAS threads)."""
    index = vectors.index
    coll = f"recall_{size}"
    await index.ensure_collection(coll, 384)
    vecs = np.random.default_rng(0).standard_normal((size, 384)).astype(np.float32)
    await index.upsert(coll, [VectorRow(f"m{i}", vecs[i], {"tenant": "t", "agent": "support"}) for i in range(size)])
    lat = []
    for q in range(50):
        t0 = time.perf_counter()
        v = (await embedder.embed([f"do you remember my order {q}"]))[0]
        await index.search(coll, v.tolist(), where={"tenant": "t", "agent": "support"}, limit=5)
        lat.append(timed_ms(t0))
    await index.delete(coll, where={})
    return latency_row(f"recall_{size // 1000}k", lat, index=index.kind)


def print_table(results: list[dict[str, Any]]) -> None:
    for r in results:
        print(json.dumps(r))
    print(f"\n{'benchmark':28} {'p50 ms':>9} {'p99 ms':>9} {'other':>14}")
    for r in results:
        other = f"{r['per_s']:.0f}/s" if "per_s" in r else ""
        print(f"{r['bench']:28} {r['p50_ms']:9.3f} {r.get('p99_ms', float('nan')):9.3f} {other:>14}")


async def main(sessions: int = 400, archived: int = 200, recall_sizes: tuple[int, ...] = (10_000, 100_000)) -> None:
    url = os.environ.get("STRATA_TEST_REDIS_URL")
    if not url:
        sys.exit("set STRATA_TEST_REDIS_URL (eval \"$(bash hack/services.sh env)\")")
    tmp = tempfile.mkdtemp()
    redis = RedisConnector(RedisStoreConfig(backend="redis", url=url, key_prefix=f"bench{uuid.uuid4().hex[:6]}"), {})
    sql = SqlConnector(SqlStoreConfig(backend="sqlite", sqlite_path=f"{tmp}/b.db"), {})
    vectors = VectorConnector(VectorStoreConfig(backend="memory"), {})
    for c in (redis, sql, vectors):
        await c.start()
    embedder = HashingEmbedder(384)
    cfg = MemoryConfig(buffer_turns=1000)
    engine = MemoryEngine(cfg, redis, SpillStore(sql), LongTermMemory(vectors, lambda: embedder, "bench"))
    sids = [f"s{i}" for i in range(sessions)]
    results = await bench_turns(engine, sids)
    results.append(await bench_restore(MemoryEngine(cfg, redis, SpillStore(sql), None), sids))
    archiving = MemoryEngine(MemoryConfig(buffer_turns=10), redis, SpillStore(sql),
                             LongTermMemory(vectors, lambda: embedder, "bench"))
    results.append(await bench_archive(archiving, archived))
    with threadpool_limits(1):
        for size in recall_sizes:
            results.append(await bench_recall(vectors, embedder, size))
    print_table(results)
    for c in (vectors, sql, redis):
        await c.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="20 sessions, 1k memories: only that it runs")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(20, 10, (1_000,)) if args.smoke else main())
