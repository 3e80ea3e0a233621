"""Gateway benchmark: Strata runtime vs LiteLLM proxy, same upstream, interleaved in one run.

    .venv/bin/python bench/gateway.py [--duration 4] [--rounds 1] [--no-litellm]

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
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fixtures import UpstreamServer  # noqa: E402
from tests.support.runtime_process import RuntimeProcess, free_port  # noqa: E402

KEY = "bench-key-0123456789"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SCENARIOS = [("json", 1), ("json", 32), ("stream", 1), ("stream", 32)]


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except (OSError, IndexError, ValueError):
            continue
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_strata(upstream: UpstreamServer, workdir: Path) -> RuntimeProcess:
    config = {
        "server": {"drainSeconds": 5},
        "auth": {"mode": "apiKey", "apiKeys": [{"tenant": "bench", "keyEnv": "BENCH_KEY"}]},
        "stores": {"redis": {"backend": "memory"}, "sql": {"backend": "sqlite", "sqlitePath": str(workdir / "s.db")},
                   "vectors": {"backend": "memory"}},
        "cache": {"enabled": False},
        "models": [{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream.base_url, "apiKeyEnv": "UP_KEY",
                    "maxRetries": 0}],
    }
    return RuntimeProcess(config, workdir, env={"BENCH_KEY": KEY, "UP_KEY": "sk-bench",
                                                "STRATA_LOG_LEVEL": "WARNING"}).start()


class LiteLLM:
    def __init__(self, upstream: UpstreamServer, workdir: Path):
        python = subprocess.run(["bash", str(ROOT / "bench" / "setup_litellm.sh")], check=True,
                                capture_output=True, text=True).stdout.strip().splitlines()[-1]
        self.port = free_port()
        config = workdir / "litellm.yaml"
        config.write_text(json.dumps({
            "model_list": [{"model_name": "gpt-4o-mini", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_base": upstream.base_url, "api_key": "sk-bench"}}],
            "litellm_settings": {"callbacks": [], "num_retries": 0, "drop_params": True},
            "general_settings": {"master_key": f"sk-{KEY}", "dangerously_permit_weak_or_unset_master_key": True},
        }))
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        litellm_bin = str(Path(python).parent / "litellm")
        self.log = (workdir / "litellm.log").open("wb")
        self.process = subprocess.Popen([litellm_bin, "--config", str(config), "--port", str(self.port),
                                         "--host", "127.0.0.1", "--num_workers", "1"],
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"litellm exited: {(workdir / 'litellm.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("litellm did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def run_load(port: int, key: str, kind: str, concurrency: int, duration: float) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 16,
                            "messages": [{"role": "user", "content": "hello from the gateway benchmark"}]}
    if kind == "stream":
        body["stream"] = True
    cmd = [sys.executable, str(ROOT / "bench" / "_load.py"), "--port", str(port), "--body", json.dumps(body),
           "--header", f"authorization: Bearer {key}", "--concurrency", str(concurrency),
           "--duration", str(duration), "--warmup", "0.5"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + 60).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=4.0, help="seconds measured per (gateway, scenario)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions (medians reported)")
    parser.add_argument("--no-litellm", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="strata-bench-gw-"))
    upstream = UpstreamServer().start()
    strata = start_strata(upstream, workdir)
    assert strata.process is not None
    targets: dict[str, tuple[int, int, str]] = {"strata": (strata.port, strata.process.pid, KEY)}
    litellm: LiteLLM | None = None
    if not args.no_litellm:
        started = time.monotonic()
        litellm = LiteLLM(upstream, workdir)
        print(f"litellm started in {time.monotonic() - started:.1f}s", file=sys.stderr)
        targets["litellm"] = (litellm.port, litellm.process.pid, f"sk-{KEY}")
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    try:
        for _ in range(args.rounds):
            for kind, conc in SCENARIOS:
                for name, (port, pid, key) in targets.items():
                    cpu0 = tree_cpu_seconds(pid)
                    load = run_load(port, key, kind, conc, args.duration)
                    cpu = tree_cpu_seconds(pid) - cpu0
                    load["cpu_ms_per_req"] = cpu * 1000 / max(1, load["completed_incl_warmup"])
                    load["rss_mb"] = rss_mb(pid)
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
