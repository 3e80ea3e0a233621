"""Agent-loop benchmark: the overhead of one tool step, without the model's and the tool's own time.

    .venv/bin/python -m bench.tools [--turns 2000] [--steps 4] [--smoke]

One loop step is: the model's answer (a tool call) parsed, the step recorded in the tool ledger,
the fan-out counter incremented, the call resolved (permission), its arguments validated against
the input schema, the executor run, the result size-capped and validated against the output schema,
the outcome recorded, the tool events encoded and the results fed back into the next request.
Measured with the runtime's own classes (ToolLoop, ToolRegistry, ToolLedger, CascadeGuard); the model
is a gateway that returns a prepared tool-call answer at once and the tool an executor that returns
at once, so what is timed is the loop's own work. A turn runs `--steps` tool steps (the model keeps
calling the tool; the turn stops at maxToolSteps) and the per-step time is the turn's time divided
by its steps; p50/p99 over the turns, each turn timed with perf_counter_ns, and the p50 of the
event loop thread's CPU time per step (thread_time_ns: on a shared machine the wall time also
counts waiting for a core between a Redis request and its answer).

Two ledgers: in process (the memory backend) and the Redis from `hack/services.sh env`
(`STRATA_TEST_REDIS_URL`; its rows are skipped, said on stderr, without it). Redis keys go under a
prefix of their own and are deleted at the end. `--smoke`: 100 turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime"))

from bench._stats import percentile  # noqa: E402
from strata_runtime.config import RuntimeConfig  # noqa: E402
from strata_runtime.gateway.contract import CallContext as GatewayContext  # noqa: E402
from strata_runtime.gateway.contract import ChatResult, ChatStream  # noqa: E402
from strata_runtime.metrics import Metrics  # noqa: E402
from strata_runtime.stores.redis import RedisConnector  # noqa: E402
from strata_runtime.tools.cascade import CascadeGuard  # noqa: E402
from strata_runtime.tools.contract import CallContext, ExecutorKind, ToolOutcome, ToolSpec  # noqa: E402
from strata_runtime.tools.ledger import ToolLedger  # noqa: E402
from strata_runtime.tools.loop import ToolLoop, TurnRef  # noqa: E402
from strata_runtime.tools.registry import ToolRegistry  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}


class InstantModel:
    """A model that always answers with one call of the `weather` tool, in no time."""

    def __init__(self) -> None:
        self.response = {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "weather", "arguments": '{"city": "Lisbon", "days": 3}'},
                            }
                        ],
                    }
                }
            ]
        }

    async def complete(self, body: dict[str, Any], ctx: GatewayContext) -> ChatResult:
        return ChatResult(self.response, provider="bench", model_resolved="bench", cache="disabled")

    async def stream(self, body: dict[str, Any], ctx: GatewayContext) -> ChatStream:
        raise AssertionError("the tools bench makes non-streamed model calls only (tool mode never streams)")


class InstantTool:
    kind: ExecutorKind = "python"

    async def call(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> ToolOutcome:
        return ToolOutcome.success({"city": args["city"], "temp": 21, "forecast": ["sun"] * args.get("days", 1)})

    async def aclose(self) -> None:
        return None


def _config(steps: int, redis_url: str | None, prefix: str) -> RuntimeConfig:
    redis = {"backend": "redis", "url": redis_url, "keyPrefix": prefix} if redis_url else {"backend": "memory"}
    return RuntimeConfig.model_validate(
        {
            "auth": {"mode": "none"},
            "stores": {
                "redis": redis,
                "sql": {"backend": "sqlite", "sqlitePath": ":memory:"},
                "vectors": {"backend": "memory"},
            },
            "models": [{"name": "demo", "provider": "demo"}],
            "tools": [
                {
                    "id": "weather",
                    "name": "weather",
                    "executor": "python",
                    "target": "bench.tools:weather",
                    "inputSchema": SCHEMA,
                    "outputSchema": {"type": "object", "required": ["temp"]},
                    "allowedAgents": ["support"],
                }
            ],
            "agents": [
                {
                    "id": "support",
                    "tenant": "acme",
                    "model": "demo",
                    "tools": ["weather"],
                    "limits": {"maxToolSteps": steps, "maxFanOut": 10_000},
                }
            ],
        }
    )


async def bench_loop(turns: int, steps: int, redis_url: str | None) -> dict[str, Any]:
    prefix = f"benchtools{uuid.uuid4().hex[:8]}"
    config = _config(steps, redis_url, prefix)
    redis = RedisConnector(config.stores.redis, {})
    await redis.start()
    registry = ToolRegistry(lambda: config, [InstantTool()])
    loop = ToolLoop(registry, ToolLedger(redis, 3600), CascadeGuard(redis, Metrics(), lambda: 3600))
    model = InstantModel()
    agent = config.agents[0]
    tools = await registry.allowed("acme", "support")
    body = {
        "model": "demo",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Lisbon?"}],
    }
    gctx = GatewayContext(tenant="acme", agent_id="support")
    per_step: list[float] = []
    cpu_per_step: list[float] = []
    try:
        for i in range(turns):
            turn = TurnRef(tenant="acme", session_id=f"s{i}", seq=1, agent=agent, tools=tools)
            started, cpu_started = time.perf_counter_ns(), time.thread_time_ns()
            pieces = [piece async for piece in loop.run(model, body, gctx, turn)]
            elapsed, cpu = time.perf_counter_ns() - started, time.thread_time_ns() - cpu_started
            assert len(pieces) == 2 * steps + 2, pieces  # call + result per step, then status + text
            per_step.append(elapsed / steps / 1e6)
            cpu_per_step.append(cpu / steps / 1e6)
    finally:
        client = redis.client
        if client is not None:
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
            for start in range(0, len(keys), 500):
                await client.delete(*keys[start : start + 500])
        await redis.close()
    return {
        "metric": "loop_step_overhead",
        "ledger": "redis" if redis_url else "memory",
        "turns": turns,
        "steps_per_turn": steps,
        "p50_ms": round(percentile(per_step, 0.5), 4),
        "p99_ms": round(percentile(per_step, 0.99), 4),
        "cpu_p50_ms": round(percentile(cpu_per_step, 0.5), 4),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.turns = 100
    redis_url = os.environ.get("STRATA_TEST_REDIS_URL") or None
    results = [await bench_loop(args.turns, args.steps, None)]
    if redis_url:
        results.append(await bench_loop(args.turns, args.steps, redis_url))
    else:
        print("STRATA_TEST_REDIS_URL is not set: the Redis ledger rows are skipped", file=sys.stderr)
    for r in results:
        print(json.dumps({"bench": "tools", **r}), flush=True)
    print(
        f"{'metric':22} {'ledger':>8} {'turns':>6} {'steps':>6} {'p50_ms':>9} {'p99_ms':>9} {'cpu_p50_ms':>10}",
        file=sys.stderr,
    )
    for r in results:
        print(
            f"{r['metric']:22} {r['ledger']:>8} {r['turns']:>6} {r['steps_per_turn']:>6} {r['p50_ms']:>9} "
            f"{r['p99_ms']:>9} {r['cpu_p50_ms']:>10}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    asyncio.run(main())
