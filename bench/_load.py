"""Raw-socket HTTP/1.1 load generator, run as its own process (never shares a core's loop with a server).

    python -m bench._load --port P --path /v1/chat/completions --body '{"...": 1}' \
        --header 'authorization: Bearer k' --concurrency 32 --duration 5 [--warmup 1]

Each of `concurrency` workers keeps one keep-alive connection and sends requests back to
back. Prints one JSON object: completed, errors, rps, latency p50/p99 ms and, for every
response, time to the first body byte (TTFT for SSE streams) p50/p99 ms.

Imported by the benchmarks (bench/gateway.py, bench/cache.py) for what they share around the
load generator: `run_load` (runs this module as its own process), per-process-tree CPU and
RSS from /proc, and the `LiteLLM` proxy peer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httptools

from bench._stats import percentile
from tests.support.processes import stop_process

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[int] | None = None
        self.first_body = 0.0
        self.status = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("closed"))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.first_body:
            self.first_body = time.perf_counter()

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.status)


async def worker(host: str, port: int, payload: bytes, stop_at: float, record_from: float,  # noqa: PLR0917
                 lat: list[float], ttft: list[float], errors: list[int], total: list[int]) -> None:
    loop = asyncio.get_running_loop()
    conn: _Conn | None = None
    while time.perf_counter() < stop_at:
        if conn is None or conn.transport is None or conn.transport.is_closing():
            _, conn = await loop.create_connection(_Conn, host, port)
        conn.done = loop.create_future()
        conn.first_body = 0.0
        started = time.perf_counter()
        assert conn.transport is not None
        conn.transport.write(payload)
        try:
            status = await conn.done
        except ConnectionError:
            errors.append(0)
            conn = None
            continue
        ended = time.perf_counter()
        total[0] += 1
        if started < record_from:
            continue
        if status != 200:
            errors.append(status)
            continue
        lat.append(ended - started)
        ttft.append((conn.first_body or ended) - started)


async def run(args: argparse.Namespace) -> dict[str, float]:
    body = args.body.encode()
    headers = "".join(f"{h}\r\n" for h in args.header)
    payload = (f"POST {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n{headers}\r\n").encode() + body
    now = time.perf_counter()
    record_from = now + args.warmup
    stop_at = record_from + args.duration
    lat: list[float] = []
    ttft: list[float] = []
    errors: list[int] = []
    total = [0]
    await asyncio.gather(*(worker(args.host, args.port, payload, stop_at, record_from, lat, ttft, errors, total)
                           for _ in range(args.concurrency)))
    measured = time.perf_counter() - record_from
    return {"completed": len(lat), "completed_incl_warmup": total[0], "errors": len(errors), "rps": len(lat) / measured,
            "p50_ms": percentile(lat, 0.5) * 1000, "p99_ms": percentile(lat, 0.99) * 1000,
            "ttft_p50_ms": percentile(ttft, 0.5) * 1000, "ttft_p99_ms": percentile(ttft, 0.99) * 1000,
            "measured_s": measured}


# ---------------------------------------------------------------------------------------------
# Shared by the benchmark drivers (parent process side)
# ---------------------------------------------------------------------------------------------


def run_load(port: int, body: dict[str, Any], *, headers: tuple[str, ...] = (), concurrency: int = 1,
             duration: float = 4.0, warmup: float = 0.5, path: str = "/v1/chat/completions") -> dict[str, Any]:
    """Run this load generator in its own process against 127.0.0.1:port; its JSON result."""
    cmd = [sys.executable, "-m", "bench._load", "--port", str(port), "--path", path,
           "--body", json.dumps(body), "--concurrency", str(concurrency), "--duration", str(duration),
           "--warmup", str(warmup)]
    for header in headers:
        cmd += ["--header", header]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + warmup + 60,
                         cwd=ROOT).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants, from /proc."""
    return sum(tree_cpu_split(pid))


def tree_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process and all its descendants, from /proc: user-space and kernel seconds."""
    user = kernel = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) / CLK_TCK
            kernel += int(fields[12]) / CLK_TCK
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except (OSError, IndexError, ValueError):
            continue
    return user, kernel


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measured_load(port: int, pid: int, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """`run_load` plus the server's CPU ms per request (all requests, warm-up included) and RSS."""
    cpu0 = tree_cpu_seconds(pid)
    load = run_load(port, body, **kw)
    cpu = tree_cpu_seconds(pid) - cpu0
    load["cpu_ms_per_req"] = cpu * 1000 / max(1, load["completed_incl_warmup"])
    load["rss_mb"] = rss_mb(pid)
    return load


BENCH_KEY = "bench-key-0123456789"


def start_strata(upstream_base_url: str, workdir: Path, **sections: Any) -> Any:
    """One Strata runtime on memory/SQLite stores, API-key auth, and the upstream as `gpt-4o-mini`;
    `sections` replace top-level config sections (e.g. `cache`, `embedder`)."""
    from tests.support.runtime_process import RuntimeProcess

    config: dict[str, Any] = {
        "server": {"drainSeconds": 5},
        "auth": {"mode": "apiKey", "apiKeys": [{"tenant": "bench", "keyEnv": "BENCH_KEY"}]},
        "stores": {"redis": {"backend": "memory"}, "sql": {"backend": "sqlite", "sqlitePath": str(workdir / "s.db")},
                   "vectors": {"backend": "memory"}},
        "cache": {"enabled": False},
        "models": [{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream_base_url, "apiKeyEnv": "UP_KEY",
                    "maxRetries": 0, "pricing": {"inputPer1M": 0.15, "outputPer1M": 0.6}}],
        **sections,
    }
    env = {"BENCH_KEY": BENCH_KEY, "UP_KEY": "sk-bench", "STRATA_LOG_LEVEL": "WARNING"}
    return RuntimeProcess(config, workdir, env=env).start(timeout=120)


class LiteLLM:
    """The LiteLLM proxy (pinned, own venv via bench/setup_litellm.sh), one worker, no DB, one model."""

    def __init__(self, upstream_base_url: str, workdir: Path, master_key: str,
                 litellm_settings: dict[str, Any] | None = None):
        python = subprocess.run(["bash", str(ROOT / "bench" / "setup_litellm.sh")], check=True,
                                capture_output=True, text=True).stdout.strip().splitlines()[-1]
        self.port = _free_port()
        self.key = master_key
        config = workdir / f"litellm-{self.port}.yaml"
        config.write_text(json.dumps({
            "model_list": [{"model_name": "gpt-4o-mini", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_base": upstream_base_url, "api_key": "sk-bench"}}],
            "litellm_settings": {"callbacks": [], "num_retries": 0, "drop_params": True,
                                 **(litellm_settings or {})},
            "general_settings": {"master_key": master_key, "dangerously_permit_weak_or_unset_master_key": True},
        }))
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        litellm_bin = str(Path(python).parent / "litellm")
        log_path = workdir / f"litellm-{self.port}.log"
        self.log = log_path.open("wb")
        self.process = subprocess.Popen([litellm_bin, "--config", str(config), "--port", str(self.port),
                                         "--host", "127.0.0.1", "--num_workers", "1"],
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"litellm exited: {log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError("litellm did not start")

    def stop(self) -> None:
        stop_process(self.process, 15)
        self.log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--body", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
