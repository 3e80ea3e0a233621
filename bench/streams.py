"""Concurrent slow streams: how many open answers one runtime process relays at full pace.

    .venv/bin/python -m bench.streams [--streams 250,500,1000] [--duration 6] [--scenario A,B]
                                      [--no-litellm] [--litellm-max 500] [--no-query] [--smoke]

Scenario A: 2-second answers (21 SSE events 100 ms apart). Scenario B: realistic answers (300
chunks at 50 per second, ~6 s). For each scenario and each N, the stream load generator
(bench/_streamload.py, its own process) keeps N answers open at once, back to back, against
each target in turn (interleaved): the upstream itself (the floor: what pacing the upstream and
the load generator manage with no gateway between them), Strata's /v1/chat/completions, LiteLLM's
(up to --litellm-max streams), and with --query also Strata with the response cache on (every
request a miss: unique messages) and /api/v1/query SSE (agent turn with session memory) with the
cache off and on.

Figures per cell: completed streams, errors, CPU per relayed chunk (the target's process-tree
utime+stime over the run divided by SSE events received; `sys us` its kernel part), CPU per stream, RSS per open stream
(RSS while N streams are open minus RSS before, divided by N), added inter-chunk delay p50/p99
(a gap between two reads minus the upstream's pace), TTFB p99, and the load generator's and the
upstream's own CPU share (to show they are not the bottleneck), with the machine's load average.

stdout: one JSON line per cell and per ratio; stderr: a human table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._load import BENCH_KEY, ROOT, LiteLLM, rss_mb, start_strata, tree_cpu_seconds, tree_cpu_split
from tests.support.fixtures import UpstreamServer

SCENARIOS = {"A": {"events": 21, "interval_ms": 100.0}, "B": {"events": 300, "interval_ms": 20.0}}
# One tenant opens every stream here: its per-pod concurrency caps (a fairness limit) are lifted.
SERVER = {"drainSeconds": 5, "limits": {"perTenant": {"requests": None, "streams": None}}}
AGENTS = [{"id": "support", "tenant": "bench", "model": "gpt-4o-mini", "systemPrompt": "Be brief."}]


# The fake upstream answers "echo: <the last user message>" cut into as many pieces as the scenario
# has content events: a message this long gives every piece text (~22 characters in A, 1-2 in B).
# A short one left most of B's 298 pieces empty: /api/v1/query sends no event for an empty delta,
# so its B streams carried ~30 events, not 300, and "CPU per chunk" was per tenth of the chunks. No
# word that asks for long-term memory ("again", "before", ...): that recall embeds the message (E5,
# ~15 ms of CPU per turn on this one), a cost of the turn that bench/memory.py covers, not the stream's.
FILLER = ("Tell me, in plain words and in some detail, how a request travels from the client through the "
          "gateway to the model and back, what each part on the way does with it, which of them may "
          "keep a copy, where the time goes when many users ask at once, and what an operator should watch "
          "when the answers start to arrive late. Keep it short enough to read on a phone, and say which "
          "numbers matter most of all. ")


def chat_body(unique: bool) -> dict[str, Any]:
    text = ("stream run {n} please. " if unique else "stream please. ") + FILLER
    return {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": text}]}


def query_body() -> dict[str, Any]:
    return {"message": "stream run {n} please. " + FILLER, "session_id": "s{n}", "chatbot_id": "support",
            "stream": True}


class Target:
    def __init__(self, name: str, port: int, pid: int, path: str, body: dict[str, Any],  # noqa: PLR0917
                 headers: tuple[str, ...], *, unique: bool = False, limit: int | None = None):
        self.name, self.port, self.pid, self.path, self.body = name, port, pid, path, body
        self.headers, self.unique, self.limit = headers, unique, limit


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_cell(target: Target, streams: int, scenario: dict[str, float], upstream_pid: int, *, duration: float,
             ramp: float, tag: str, profile: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench._streamload", "--port", str(target.port), "--path", target.path,
           "--body", json.dumps(target.body), "--streams", str(streams), "--duration", str(duration),
           "--ramp", str(ramp), "--interval-ms", str(scenario["interval_ms"]), "--tag", tag]
    if target.unique:
        cmd.append("--unique")
    for header in target.headers:
        cmd += ["--header", header]
    load_before = loadavg()
    rss0 = rss_mb(target.pid)
    (user0, sys0), up0, t0 = tree_cpu_split(target.pid), tree_cpu_seconds(upstream_pid), time.monotonic()
    peak: list[float] = []

    def sample_rss() -> None:  # while every stream is open: after the ramp, mid-run
        time.sleep(ramp + min(duration / 2, 2.0))
        peak.append(rss_mb(target.pid))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    profiler = None
    if profile is not None:  # py-spy on the target for the measured part (collapsed stacks)
        spy = str(Path(sys.executable).parent / "py-spy")
        out_file = str(profile / f"{tag}-{target.name}.txt")
        profiler = subprocess.Popen([spy, "record", "--pid", str(target.pid), "--rate", "250",
                                     "--format", "raw", "--duration", str(int(duration)), "--output", out_file],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT,
                         timeout=ramp + duration + 90).stdout
    sampler.join()
    if profiler is not None:
        profiler.wait(timeout=60)
    wall = time.monotonic() - t0
    user1, sys1 = tree_cpu_split(target.pid)
    kernel = sys1 - sys0
    cpu, up_cpu = user1 - user0 + kernel, tree_cpu_seconds(upstream_pid) - up0
    load: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    events = max(1, load["events_all"])
    streams_done = max(1, load["events_all"] / scenario["events"])
    own = target.name == "upstream"  # the floor: the target is the upstream itself
    return {**load, "target": target.name, "streams": streams, "wall_s": round(wall, 2),
            "cpu_us_per_chunk": cpu * 1e6 / events, "sys_us_per_chunk": kernel * 1e6 / events,
            "cpu_ms_per_stream": cpu * 1000 / streams_done, "cpu_share": cpu / wall,
            "rss_kb_per_stream": max(0.0, (peak[0] if peak else rss0) - rss0) * 1024 / streams,
            "rss_mb": peak[0] if peak else rss0,
            "loadgen_cpu_share": load["loadgen_cpu_s"] / wall, "upstream_cpu_share": 0.0 if own else up_cpu / wall,
            "loadavg_1m": load_before}


def start_targets(args: argparse.Namespace, upstream: UpstreamServer, workdir: Path,
                  stop: list[Any]) -> list[Target]:
    auth = (f"authorization: Bearer {BENCH_KEY}",)
    targets = [Target("upstream", upstream.port, _pid(upstream), "/v1/chat/completions", chat_body(False), ())]
    strata = start_strata(upstream.base_url, workdir / "plain", agents=AGENTS, server=SERVER,
                          **_stores(args, workdir / "plain"))
    stop.append(strata.stop)
    targets.append(Target("strata", strata.port, strata.process.pid, "/v1/chat/completions", chat_body(False), auth))
    if args.compare_with is not None:  # the same runtime built from another checkout, interleaved
        base = _start_from(args.compare_with, upstream.base_url, workdir / "base", args)
        stop.append(base.stop)
        targets.append(Target("strata@base", base.port, base.process.pid, "/v1/chat/completions", chat_body(False),
                              auth))
        if not args.no_query:
            targets.append(Target("strata-query@base", base.port, base.process.pid, "/api/v1/query", query_body(),
                                  auth, unique=True))
    if not args.no_litellm:
        litellm = LiteLLM(upstream.base_url, workdir, f"sk-{BENCH_KEY}")
        stop.append(litellm.stop)
        targets.append(Target("litellm", litellm.port, litellm.process.pid, "/v1/chat/completions",
                              chat_body(False), (f"authorization: Bearer sk-{BENCH_KEY}",), limit=args.litellm_max))
    if not args.no_query:
        targets.append(Target("strata-query", strata.port, strata.process.pid, "/api/v1/query", query_body(), auth,
                              unique=True))
        cached = start_strata(upstream.base_url, workdir / "cache", agents=AGENTS, server=SERVER,
                              **_stores(args, workdir / "cache"),
                              cache={"enabled": True, "backend": "memory", "semantic": {"enabled": False}})
        stop.append(cached.stop)
        targets.append(Target("strata+cache", cached.port, cached.process.pid, "/v1/chat/completions",
                              chat_body(True), auth, unique=True))
        targets.append(Target("strata-query+cache", cached.port, cached.process.pid, "/api/v1/query",
                              query_body(), auth, unique=True))
    return targets


def _stores(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """With --redis, sessions (and the runtime's other Redis state) live in that Redis, under a key prefix
    of this run's own: a query turn's writes then make their round trips (group-committed)."""
    if args.redis is None:
        return {}
    prefix = f"bench-streams-{os.getpid()}-{workdir.name}"
    return {"stores": {"redis": {"backend": "redis", "url": args.redis, "keyPrefix": prefix},
                       "sql": {"backend": "sqlite", "sqlitePath": str(workdir / "s.db")},
                       "vectors": {"backend": "memory"}}}


def _start_from(root: Path, upstream_base_url: str, workdir: Path, args: argparse.Namespace) -> Any:
    """start_strata with the runtime package imported from `root`/runtime (RuntimeProcess copies os.environ)."""
    workdir.mkdir(exist_ok=True)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root.resolve() / "runtime"), str(ROOT)])
    try:
        return start_strata(upstream_base_url, workdir, agents=AGENTS, server=SERVER, **_stores(args, workdir))
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _pid(upstream: UpstreamServer) -> int:
    assert upstream.process is not None
    return upstream.process.pid


COLUMNS = ("scen", "target", "N", "done", "err", "us/chunk", "sys us", "ms/stream", "cpu%", "KB/stream", "add p50",
           "add p99", "ttfb p99", "lg cpu%", "up cpu%", "load")


def row(scen: str, r: dict[str, Any]) -> str:
    return (f"{scen:4} {r['target']:18} {r['streams']:>5} {r['completed']:>6} {r['errors']:>4} "
            f"{r['cpu_us_per_chunk']:>8.1f} {r['sys_us_per_chunk']:>6.1f} {r['cpu_ms_per_stream']:>9.2f} "
            f"{r['cpu_share'] * 100:>5.0f} "
            f"{r['rss_kb_per_stream']:>9.1f} {r['added_p50_ms']:>7.1f} {r['added_p99_ms']:>7.1f} "
            f"{r['ttfb_p99_ms']:>8.1f} {r['loadgen_cpu_share'] * 100:>7.0f} {r['upstream_cpu_share'] * 100:>7.0f} "
            f"{r['loadavg_1m']:>5.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", default="250,500,1000", help="comma-separated N (concurrent streams)")
    parser.add_argument("--scenario", default="A,B")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per cell (after the ramp)")
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which the N streams start")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--litellm-max", type=int, default=500, help="largest N sent to LiteLLM")
    parser.add_argument("--no-query", action="store_true", help="skip the cache and /api/v1/query targets")
    parser.add_argument("--only", default="", help="comma-separated target names to run (default: all)")
    parser.add_argument("--compare-with", type=Path, help="also run the runtime from this checkout (before/after)")
    parser.add_argument("--profile", type=Path, help="py-spy each target into this directory (collapsed stacks)")
    parser.add_argument("--redis", help="a Redis URL: the runtimes keep sessions there (default: in process)")
    parser.add_argument("--smoke", action="store_true", help="seconds, tiny N, no LiteLLM: only that it runs")
    args = parser.parse_args()
    _raise_open_files(max(int(x) for x in args.streams.split(",")))
    scenarios = {k: dict(SCENARIOS[k]) for k in args.scenario.split(",")}
    if args.smoke:
        args.streams, args.duration, args.ramp, args.no_litellm = "8", 0.5, 0.2, True
        scenarios = {"A": {"events": 6, "interval_ms": 20.0}}
    workdir = Path(tempfile.mkdtemp(prefix="strata-bench-streams-"))
    (workdir / "plain").mkdir()
    (workdir / "cache").mkdir()
    upstream = UpstreamServer().start()
    stop: list[Any] = [upstream.stop]
    results: list[tuple[str, dict[str, Any]]] = []
    try:
        targets = start_targets(args, upstream, workdir, stop)
        only = set(filter(None, args.only.split(",")))
        targets = [t for t in targets if not only or t.name in only]
        print(" ".join(f"{c:>8}" for c in COLUMNS), file=sys.stderr)
        for scen, spec in scenarios.items():
            # role chunk + content chunks + finish chunk = events; the usage chunk and [DONE] follow.
            upstream.control(chunk_delay_ms=spec["interval_ms"], chunks=int(spec["events"]) - 2)
            for n in (int(x) for x in args.streams.split(",")):
                for target in targets:  # interleaved: every target at this N before the next N
                    if target.limit is not None and n > target.limit:
                        continue
                    cell = run_cell(target, n, spec, _pid(upstream), duration=args.duration, ramp=args.ramp,
                                    tag=f"{scen}{n}t{len(results)}x{time.time_ns() % 10**9}",
                                    profile=args.profile)
                    cell["scenario"] = scen
                    results.append((scen, cell))
                    print(json.dumps({"bench": "streams", **{k: (round(v, 3) if isinstance(v, float) else v)
                                                             for k, v in cell.items()}}), flush=True)
                    print(row(scen, cell), file=sys.stderr, flush=True)
    finally:
        for fn in reversed(stop):
            fn()
    ratios(results)
    failed = [r for _, r in results if r["completed"] == 0]
    if failed:
        sys.exit(f"no stream completed for {[(r['scenario'], r['target'], r['streams']) for r in failed]}")


def _raise_open_files(streams: int) -> None:
    """Each stream holds a socket in the load generator, two in a gateway, one in the upstream: the soft
    limit on open files (inherited by every process the bench starts) is raised to fit, up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * streams + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        if ceiling < wanted:
            print(f"open files limited to {ceiling} (hard limit): fewer than {wanted} for {streams} streams",
                  file=sys.stderr)


def ratios(results: list[tuple[str, dict[str, Any]]]) -> None:
    cells = {(s, r["target"], r["streams"]): r for s, r in results}
    for (scen, name, n), ours in cells.items():
        peer = cells.get((scen, "litellm", n))
        if name != "strata" or peer is None:
            continue
        ratio = {"cpu_per_chunk_x_less": peer["cpu_us_per_chunk"] / max(ours["cpu_us_per_chunk"], 1e-9),
                 "added_p99_ms": [round(ours["added_p99_ms"], 1), round(peer["added_p99_ms"], 1)],
                 "errors": [ours["errors"], peer["errors"]]}
        print(json.dumps({"bench": "streams", "ratio": "litellm/strata", "scenario": scen, "streams": n, **ratio}),
              flush=True)
        print(f"ratio {scen} N={n}: LiteLLM spends x{ratio['cpu_per_chunk_x_less']:.1f} Strata's CPU per chunk; "
              f"added p99 {ratio['added_p99_ms'][0]} vs {ratio['added_p99_ms'][1]} ms", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
