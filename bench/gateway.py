"""Gateway benchmark: Strata runtime vs LiteLLM proxy, same upstream, interleaved in one run.

    .venv/bin/python -m bench.gateway [--duration 4] [--rounds 1] [--no-litellm] [--smoke]

Starts the fake OpenAI upstream (tests/support/upstream.py, zero latency), one Strata runtime
(single uvicorn process, memory backends, cache off, API-key auth on) and the LiteLLM proxy
(pinned, own venv via bench/setup_litellm.sh, one worker, no DB). For each scenario
(non-stream and stream, concurrency 1 and 32) it runs the raw-socket load generator
(bench/_load.py, its own process) against each gateway in turn and reads the gateway's CPU
time (utime+stime of its process tree from /proc) before and after.

stdout: one JSON line per (gateway, scenario) and one per ratio; stderr: a human table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._load import BENCH_KEY, LiteLLM, measured_load, start_strata
from tests.support.fixtures import UpstreamServer

KEY = BENCH_KEY
SCENARIOS = [("json", 1), ("json", 32), ("stream", 1), ("stream", 32)]


def request_body(kind: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 16,
                            "messages": [{"role": "user", "content": "hello from the gateway benchmark"}]}
    if kind == "stream":
        body["stream"] = True
    return body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=4.0, help="seconds measured per (gateway, scenario)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions (medians reported)")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a few seconds, no LiteLLM: only that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.rounds, args.no_litellm = 0.3, 1, True
    workdir = Path(tempfile.mkdtemp(prefix="strata-bench-gw-"))
    upstream = UpstreamServer().start()
    strata = start_strata(upstream.base_url, workdir)
    assert strata.process is not None
    targets: dict[str, tuple[int, int, str]] = {"strata": (strata.port, strata.process.pid, KEY)}
    litellm: LiteLLM | None = None
    if not args.no_litellm:
        started = time.monotonic()
        litellm = LiteLLM(upstream.base_url, workdir, f"sk-{KEY}")
        print(f"litellm started in {time.monotonic() - started:.1f}s", file=sys.stderr)
        targets["litellm"] = (litellm.port, litellm.process.pid, f"sk-{KEY}")
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    try:
        for _ in range(args.rounds):
            for kind, conc in SCENARIOS:
                for name, (port, pid, key) in targets.items():
                    load = measured_load(port, pid, request_body(kind), headers=(f"authorization: Bearer {key}",),
                                         concurrency=conc, duration=args.duration)
                    results.setdefault((name, kind, conc), []).append(load)
    finally:
        strata.stop()
        if litellm is not None:
            litellm.stop()
        upstream.stop()

    def median(runs: list[dict[str, Any]], key: str) -> float:
        values = sorted(r[key] for r in runs)
        return float(values[len(values) // 2])

    keys = ("rps", "p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms", "cpu_ms_per_req", "rss_mb", "errors")
    summary: dict[tuple[str, str, int], dict[str, float]] = {}
    for (name, kind, conc), runs in results.items():
        summary[(name, kind, conc)] = {k: median(runs, k) for k in keys}
        print(json.dumps({"bench": "gateway", "gateway": name, "mode": kind, "concurrency": conc,
                          **{k: round(v, 3) for k, v in summary[(name, kind, conc)].items()}}), flush=True)
    print(f"{'gateway':8} {'mode':6} {'conc':>4} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'ttft p50':>8} "
          f"{'cpu ms/req':>10} {'rss MB':>7} {'err':>4}", file=sys.stderr)
    for (name, kind, conc), s in sorted(summary.items(), key=lambda x: (x[0][1], x[0][2], x[0][0])):
        print(f"{name:8} {kind:6} {conc:>4} {s['rps']:>8.0f} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} "
              f"{s['ttft_p50_ms']:>8.2f} {s['cpu_ms_per_req']:>10.3f} {s['rss_mb']:>7.0f} {s['errors']:>4.0f}",
              file=sys.stderr)
    if "litellm" in targets:
        for kind, conc in SCENARIOS:
            ours, peer = summary[("strata", kind, conc)], summary[("litellm", kind, conc)]
            ratio = {"rps_x": ours["rps"] / max(peer["rps"], 1e-9),
                     "p50_x_faster": peer["p50_ms"] / max(ours["p50_ms"], 1e-9),
                     "cpu_x_less": peer["cpu_ms_per_req"] / max(ours["cpu_ms_per_req"], 1e-9)}
            print(json.dumps({"bench": "gateway", "ratio": "strata/litellm", "mode": kind, "concurrency": conc,
                              **{k: round(v, 2) for k, v in ratio.items()}}), flush=True)
            print(f"ratio {kind:6} c={conc:<3} rps x{ratio['rps_x']:.1f}  p50 x{ratio['p50_x_faster']:.1f} faster  "
                  f"cpu x{ratio['cpu_x_less']:.1f} less", file=sys.stderr)


if __name__ == "__main__":
    main()
