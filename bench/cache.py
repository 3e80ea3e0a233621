"""Response-cache benchmarks; JSON lines on stdout, a human table on stderr.

    .venv/bin/python bench/cache.py index        # semantic lookup latency + recall, numpy vs milvus-lite
    .venv/bin/python bench/cache.py calibrate    # banking77 hit / wrong-hit rates per threshold
    .venv/bin/python bench/cache.py lookup       # in-process exact / semantic hit latency of CacheService

Index: per-partition numpy brute force (what the cache uses) vs milvus-lite FLAT, queries are
perturbed copies of stored vectors; recall@1 is measured against an exact float64 brute force.
Calibration: banking77 test split, same-intent pairs (should hit) vs cross-intent pairs (must
miss), cosine from the real local embedder, with and without the hit guard.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
BANKING = ROOT.parent / "shared" / "data" / "banking77"


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_index(sizes: list[int], milvus_sizes: list[int], queries: int = 200) -> None:
    from strata_runtime.cache.index import SemanticIndex

    rng = np.random.default_rng(7)
    dim = 384
    for n in sizes:
        data = rng.standard_normal((n, dim)).astype(np.float32)
        data /= np.linalg.norm(data, axis=1, keepdims=True)
        index = SemanticIndex(dim)
        t0 = time.perf_counter()
        for i in range(n):
            index.add("fp", str(i), data[i])
        build = time.perf_counter() - t0
        picks = rng.integers(0, n, queries)
        noise = rng.standard_normal((queries, dim)).astype(np.float32) * 0.02
        q = data[picks] + noise
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        lat, hits = [], 0
        exact = np.argmax(data.astype(np.float64) @ q.astype(np.float64).T, axis=0)
        for j in range(queries):
            t = time.perf_counter()
            found = index.search("fp", q[j], threshold=-1.0, k=5)
            lat.append((time.perf_counter() - t) * 1000)
            hits += int(found[0][0] == str(exact[j]))
        rec = {"bench": "semantic_index", "engine": "numpy", "entries": n, "p50_ms": pct(lat, 50),
               "p99_ms": pct(lat, 99), "recall_at_1": hits / queries, "build_s": round(build, 2),
               "rss_mb": round(rss_mb())}
        emit(rec)
        print(f"numpy   {n:>8} entries  p50 {rec['p50_ms']:.2f} ms  p99 {rec['p99_ms']:.2f} ms  "
              f"recall@1 {rec['recall_at_1']:.3f}", file=sys.stderr)
        if n in milvus_sizes:
            bench_milvus(data, q, exact, n)
        del index, data


def bench_milvus(data: np.ndarray, q: np.ndarray, exact: np.ndarray, n: int) -> None:
    from pymilvus import MilvusClient

    with tempfile.TemporaryDirectory() as tmp:
        client = MilvusClient(os.path.join(tmp, "bench.db"))
        client.create_collection("c", dimension=data.shape[1], metric_type="COSINE", auto_id=False)
        t0 = time.perf_counter()
        for i in range(0, n, 5000):
            client.insert("c", [{"id": j, "vector": data[j].tolist()} for j in range(i, min(n, i + 5000))])
        build = time.perf_counter() - t0
        lat, hits = [], 0
        for j in range(len(q)):
            t = time.perf_counter()
            res = client.search("c", data=[q[j].tolist()], limit=5)
            lat.append((time.perf_counter() - t) * 1000)
            hits += int(res[0][0]["id"] == int(exact[j]))
        client.close()
    rec = {"bench": "semantic_index", "engine": "milvus-lite", "entries": n, "p50_ms": pct(lat, 50),
           "p99_ms": pct(lat, 99), "recall_at_1": hits / len(q), "build_s": round(build, 2)}
    emit(rec)
    print(f"milvus  {n:>8} entries  p50 {rec['p50_ms']:.2f} ms  p99 {rec['p99_ms']:.2f} ms  "
          f"recall@1 {rec['recall_at_1']:.3f}", file=sys.stderr)


def bench_calibrate(pairs: int = 3000) -> None:
    from strata_runtime.cache.guard import check
    from strata_runtime.embeddings.minilm import MiniLM

    with (BANKING / "test.csv").open() as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    model = MiniLM()
    t0 = time.perf_counter()
    vectors = np.vstack([model.encode([t for t, _ in rows[i:i + 64]]) for i in range(0, len(rows), 64)])
    emit({"bench": "embed_banking77", "sentences": len(rows), "seconds": round(time.perf_counter() - t0, 1)})
    by_intent: dict[str, list[int]] = {}
    for i, (_, c) in enumerate(rows):
        by_intent.setdefault(c, []).append(i)
    rnd = random.Random(77)
    intents = sorted(by_intent)
    same = []
    while len(same) < pairs:
        members = by_intent[rnd.choice(intents)]
        a, b = rnd.sample(members, 2)
        same.append((a, b))
    cross = []
    while len(cross) < pairs:
        a, b = rnd.randrange(len(rows)), rnd.randrange(len(rows))
        if rows[a][1] != rows[b][1]:
            cross.append((a, b))
    # Hard negatives: for each sentence, its most similar sentence of another intent.
    sims = vectors @ vectors.T
    labels = np.array([c for _, c in rows])
    hard = []
    for i in rnd.sample(range(len(rows)), min(pairs, len(rows))):
        s = sims[i].copy()
        s[labels == labels[i]] = -2
        hard.append((i, int(np.argmax(s))))

    def rate(pair_list: list[tuple[int, int]], t: float, guarded: bool) -> float:
        hits = 0
        for a, b in pair_list:
            if float(sims[a, b]) >= t and (not guarded or check(rows[a][0], rows[b][0]).allowed):
                hits += 1
        return hits / len(pair_list)

    # Cache-like: every other test sentence is stored; each sentence asks; the best match decides.
    nn_sims = sims.copy()
    np.fill_diagonal(nn_sims, -2)
    order = np.argsort(-nn_sims, axis=1)[:, :5]

    def cache_like(t: float, guarded: bool) -> tuple[float, float]:
        right = wrong = 0
        for i in range(len(rows)):
            for j in order[i]:
                if nn_sims[i, j] < t:
                    break
                if guarded and not check(rows[i][0], rows[int(j)][0]).allowed:
                    continue
                if labels[i] == labels[int(j)]:
                    right += 1
                else:
                    wrong += 1
                break
        return right / len(rows), wrong / len(rows)

    print(f"{'threshold':>9} {'guard':>5} {'same-intent hit':>16} {'random cross wrong-hit':>22} "
          f"{'hard-negative wrong-hit':>24} {'cache-like hit':>14} {'cache-like wrong':>16}", file=sys.stderr)
    for t in (0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95):
        for guarded in (False, True):
            rec = {"bench": "threshold_calibration", "dataset": "banking77/test", "threshold": t, "guard": guarded,
                   "pairs": pairs, "same_intent_hit_rate": rate(same, t, guarded),
                   "cross_intent_wrong_hit_rate": rate(cross, t, guarded),
                   "hard_negative_wrong_hit_rate": rate(hard, t, guarded)}
            rec["cache_like_right_hit_rate"], rec["cache_like_wrong_hit_rate"] = cache_like(t, guarded)
            emit(rec)
            print(f"{t:>9.2f} {guarded!s:>5} {rec['same_intent_hit_rate']:>16.3f} "
                  f"{rec['cross_intent_wrong_hit_rate']:>22.4f} {rec['hard_negative_wrong_hit_rate']:>24.4f} "
                  f"{rec['cache_like_right_hit_rate']:>14.3f} {rec['cache_like_wrong_hit_rate']:>16.4f}",
                  file=sys.stderr)


async def bench_lookup(iterations: int = 300) -> None:
    from strata_runtime.cache.service import CacheService
    from strata_runtime.config import CachePolicySpec
    from strata_runtime.embeddings import LocalMiniLMEmbedder
    from strata_runtime.gateway.contract import CallContext

    embedder = LocalMiniLMEmbedder(timeout_seconds=10)
    await embedder.start()
    cache = CacheService(CachePolicySpec.model_validate({"backend": "memory"}), embedder=embedder)
    ctx = CallContext(tenant="bench")
    answer = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 100},
                           "finish_reason": "stop"}], "usage": {"prompt_tokens": 10, "completion_tokens": 100,
                                                                "total_tokens": 110}}

    async def compute() -> dict:
        return answer

    def body(text: str) -> dict:
        return {"model": "m", "temperature": 0, "messages": [{"role": "system", "content": "s"},
                                                             {"role": "user", "content": text}]}

    await cache.complete(body("How do I reset my password?"), ctx, compute)
    for kind, text in (("exact", "How do I reset my password?"), ("semantic", "How can I reset my password?")):
        lat = []
        for _ in range(iterations if kind == "exact" else 50):
            t = time.perf_counter()
            _, result = await cache.complete(body(text), ctx, compute)
            lat.append((time.perf_counter() - t) * 1000)
            assert result == f"hit_{kind}", result
        rec = {"bench": "cache_hit_in_process", "kind": kind, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}
        emit(rec)
        print(f"in-process {kind:<8} hit p50 {rec['p50_ms']:.3f} ms  p99 {rec['p99_ms']:.3f} ms", file=sys.stderr)
    await embedder.close()


def main() -> None:
    threadpool_limits(1, user_api="blas")
    what = sys.argv[1:] or ["index", "calibrate", "lookup"]
    if "index" in what:
        sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "10000,100000,1000000").split(",")]
        milvus = [int(s) for s in os.environ.get("BENCH_MILVUS_SIZES", "10000,100000").split(",") if s]
        bench_index(sizes, milvus)
    if "calibrate" in what:
        bench_calibrate()
    if "lookup" in what:
        asyncio.run(bench_lookup())


if __name__ == "__main__":
    main()
