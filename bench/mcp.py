"""MCP call overhead: a tool call through the runtime's MCP client vs the same call made directly with the SDK.

    .venv/bin/python -m bench.mcp [--calls 1000] [--rounds 4] [--smoke]

One demo MCP server (`tests/support/mcp_servers/demo.py`, the SDK's own MCPServer) per transport:
streamable HTTP on loopback, and a stdio child. For each, the same `echo` call is timed
(a) with the SDK's `Client` directly and (b) through the runtime's executor (`McpTools.call`: the
tool spec, the call's deadline, the idempotency key in `_meta`, the result mapped to `{ok, result,
error}`), each on its own long-lived connection. The two alternate call by call, so a pair sees the
same load of the shared machine. Printed: p50/p99 of each, the difference of the p50s, and the
median of the per-pair differences (the runtime's overhead per call). JSON lines on stdout, the
table on stderr. `--smoke`: 20 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from strata_runtime.config import McpServerConfig  # noqa: E402
from strata_runtime.tools.contract import CallContext, ToolSpec  # noqa: E402
from strata_runtime.tools.mcp_client import McpTools  # noqa: E402
from tests.support.mcp_processes import DemoHttpServer, stdio_server_config  # noqa: E402

ARGS = {"text": "ping"}


def emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


async def timed(call: Callable[[], Awaitable[Any]], n: int, into: list[float]) -> None:
    for _ in range(n):
        started = time.perf_counter()
        await call()
        into.append((time.perf_counter() - started) * 1000)


async def runtime_path(config: McpServerConfig) -> tuple[McpTools, ToolSpec]:
    tools = McpTools([config], {})
    await tools.start()
    deadline = time.monotonic() + 120
    while tools.links[config.name].state != "ready":
        if time.monotonic() > deadline:
            raise TimeoutError(f"MCP server {config.name} did not connect: {tools.status()}")
        await asyncio.sleep(0.05)
    spec = next(s for s in await tools.list_tools() if s.name == "echo")
    return tools, spec


async def measure(name: str, direct: Client, config: McpServerConfig, calls: int, rounds: int) -> dict[str, Any]:
    tools, spec = await runtime_path(config)
    ctx = CallContext(call_id="bench", tenant="bench", agent_id="bench")
    try:
        async def through_runtime() -> None:
            outcome = await tools.call(spec, ARGS, ctx)
            if not outcome.ok:
                raise RuntimeError(f"runtime call failed: {outcome.error}")

        async def directly() -> None:
            result = await direct.call_tool("echo", ARGS)
            if result.is_error:
                raise RuntimeError("direct call failed")

        await direct.list_tools()  # as the runtime did: the client knows the tools' output schemas
        await timed(directly, 10, [])  # warm both connections
        await timed(through_runtime, 10, [])
        runtime_ms: list[float] = []
        direct_ms: list[float] = []
        per_round = max(1, calls // rounds)
        for _ in range(rounds):
            for _ in range(per_round):  # one of each in turn: a pair sees the same machine load
                await timed(directly, 1, direct_ms)
                await timed(through_runtime, 1, runtime_ms)
    finally:
        await tools.close()
    d, r = np.array(direct_ms), np.array(runtime_ms)
    paired = r - d
    return {"bench": "mcp", "transport": name, "calls": len(r),
            "direct_p50_ms": round(float(np.percentile(d, 50)), 3),
            "direct_p99_ms": round(float(np.percentile(d, 99)), 3),
            "runtime_p50_ms": round(float(np.percentile(r, 50)), 3),
            "runtime_p99_ms": round(float(np.percentile(r, 99)), 3),
            "overhead_p50_ms": round(float(np.percentile(r, 50) - np.percentile(d, 50)), 3),
            "paired_overhead_median_ms": round(float(np.median(paired)), 3)}


async def bench_http(workdir: Path, calls: int, rounds: int) -> dict[str, Any]:
    server = DemoHttpServer(workdir, name="web").start()
    try:
        async with httpx2.AsyncClient(timeout=60) as http, \
                Client(streamable_http_client(server.url, http_client=http), cache=None) as direct:
            return await measure("http", direct, McpServerConfig.model_validate(server.config()), calls, rounds)
    finally:
        server.stop()


async def bench_stdio(workdir: Path, calls: int, rounds: int) -> dict[str, Any]:
    config = McpServerConfig.model_validate(stdio_server_config("local", workdir))
    params = StdioServerParameters(command=config.command[0], args=list(config.command[1:]), env=dict(config.env))
    async with Client(params, cache=None) as direct:
        return await measure("stdio", direct, config, calls, rounds)


def table(records: list[dict[str, Any]]) -> None:
    print(f"{'transport':<10} {'calls':>6} {'direct p50':>11} {'direct p99':>11} {'runtime p50':>12} "
          f"{'runtime p99':>12} {'overhead p50':>13} {'paired median':>14}   (ms)", file=sys.stderr)
    for r in records:
        print(f"{r['transport']:<10} {r['calls']:>6} {r['direct_p50_ms']:>11.3f} {r['direct_p99_ms']:>11.3f} "
              f"{r['runtime_p50_ms']:>12.3f} {r['runtime_p99_ms']:>12.3f} {r['overhead_p50_ms']:>13.3f} "
              f"{r['paired_overhead_median_ms']:>14.3f}",
              file=sys.stderr)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    calls, rounds = (20, 2) if args.smoke else (args.calls, args.rounds)
    records = []
    with tempfile.TemporaryDirectory(prefix="strata-bench-mcp-") as tmp:
        for run in (bench_http, bench_stdio):
            record = await run(Path(tmp), calls, rounds)
            emit(record)
            records.append(record)
    table(records)


if __name__ == "__main__":
    asyncio.run(main())
