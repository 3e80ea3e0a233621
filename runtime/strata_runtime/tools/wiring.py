"""Building the tool registry and its executors from config (called by the app's service factory)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from strata_runtime.agents.registry import AgentRegistry
from strata_runtime.config import RuntimeConfig
from strata_runtime.config.agents import AgentConfig
from strata_runtime.metrics import Metrics
from strata_runtime.tools.contract import CallContext, ToolExecutor, ToolOutcome, ToolSource, ToolSpec
from strata_runtime.tools.http_executor import HttpExecutor
from strata_runtime.tools.python_executor import PythonExecutor
from strata_runtime.tools.registry import ToolRegistry
from strata_runtime.usage.recorder import UsageEvent, UsageRecorder

log = logging.getLogger("strata.tools")


class ServedAgents:
    """The agents the agent manager serves now (static config and watched definitions)."""

    def __init__(self, registry: AgentRegistry):
        self.registry = registry

    def lookup(self, tenant: str, agent_id: str) -> AgentConfig | None:
        served = self.registry.lookup(tenant, agent_id)
        return served.config if served is not None else None

    def of_tenant(self, tenant: str) -> Iterable[AgentConfig]:
        return [s.config for (t, _), s in self.registry.served().items() if t == tenant]


class _RegistryLifecycle:
    def __init__(self, registry: ToolRegistry, starters: list[Any]):
        self.registry = registry
        self.starters = starters

    async def start(self) -> None:
        self.registry.validate_config()
        for component in self.starters:
            await component.start()

    async def close(self) -> None:
        await self.registry.aclose()


def _mcp(config: RuntimeConfig, env: Mapping[str, str]) -> Any | None:
    """The MCP client (executor + tool source), when MCP servers are configured (the SDK is only
    imported then) and the runtime has it installed."""
    if not config.mcp_servers:
        return None
    try:
        module = importlib.import_module("strata_runtime.tools.mcp_client")
    except ImportError:
        log.warning("MCP servers are configured but the MCP client is not installed; their tools are unavailable")
        return None
    return module.McpTools(config.mcp_servers, env)


TOOL_USAGE_PREFIX = "tool:"  # usage rows of tool calls: model `tool:<id>`, requests = calls


def build_tools(
    config: RuntimeConfig, env: Mapping[str, str], metrics: Metrics, usage: Callable[[], UsageRecorder | None]
) -> tuple[ToolRegistry, list[Any]]:
    def observe(spec: ToolSpec, ctx: CallContext, outcome: ToolOutcome, seconds: float) -> None:
        metrics.tool_calls.labels(
            spec.id, "ok" if outcome.ok else outcome.error.code if outcome.error else "error"
        ).inc()
        metrics.tool_latency.labels(spec.id).observe(seconds)
        recorder = usage()
        if recorder is not None:
            recorder.record(
                UsageEvent(
                    tenant=ctx.tenant,
                    agent=ctx.agent_id,
                    model=TOOL_USAGE_PREFIX + spec.id,
                    latency_ms=seconds * 1000,
                    error=not outcome.ok,
                )
            )

    executors: list[ToolExecutor] = [
        HttpExecutor(env),
        PythonExecutor(config.python_tools.allowed_entry_points, config.python_tools.max_workers),
    ]
    sources: list[ToolSource] = []
    starters: list[Any] = []
    mcp = _mcp(config, env)
    if mcp is not None:
        executors.append(mcp)
        sources.append(mcp)
        starters.append(mcp)
        metrics.watch_mcp_servers(mcp.snapshots)
    registry = ToolRegistry(lambda: config, executors, sources, observer=observe)
    return registry, [_RegistryLifecycle(registry, starters)]
