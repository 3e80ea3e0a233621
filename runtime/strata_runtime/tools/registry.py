"""The tools of a runtime and who may use them; every call goes through `ToolRegistry.call`.

Permission: an agent of tenant T may use a configured tool when the agent lists it (in `tools` or
in one of its skills' `tools`) and the tool's `allowedAgents` names the agent. A discovered tool
(an MCP server's, id `server.tool`) is usable by the agents its server's `allowedAgents` names.
A tool that no agent of the caller's tenant may use is reported as unknown, never as forbidden,
so a tenant cannot learn what other tenants have.

Per call: the arguments are validated against the input schema (`invalid_arguments`, the
message says which field) under the draft it names in `$schema` (MCP servers built on the
TypeScript SDK send draft-07; default 2020-12), the executor runs with the tool's timeout, the result is capped at
`maxResultBytes` and validated against the output schema when there is one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.exceptions import ValidationError as SchemaViolation
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from strata_runtime.config import RuntimeConfig
from strata_runtime.config.agents import AgentConfig, ToolConfig
from strata_runtime.tools.contract import (
    CallContext,
    ErrorCode,
    ToolExecutor,
    ToolOutcome,
    ToolSource,
    ToolSpec,
)

log = logging.getLogger("strata.tools")

DISCOVERY_REFRESH_SECONDS = 5.0
Observer = Callable[[ToolSpec, CallContext, ToolOutcome, float], None]


def spec_from_config(tool: ToolConfig) -> ToolSpec:
    return ToolSpec(
        id=tool.id,
        name=tool.name,
        description=tool.description,
        input_schema=tool.input_schema,
        output_schema=tool.output_schema,
        executor=tool.executor,
        target=tool.target,
        timeout_seconds=tool.timeout_seconds,
        max_result_bytes=tool.max_result_bytes,
        idempotent=tool.idempotent,
        allowed_agents=frozenset(tool.allowed_agents),
        options={
            "method": tool.method,
            "headers_env": dict(tool.headers_env),
            "allow_hosts": frozenset(h.lower() for h in tool.allow_hosts),
        },
    )


def _validator(schema: dict[str, Any], where: str) -> Validator:
    """A validator of the draft the schema names in `$schema` (2020-12 when it names none)."""
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        raise ValueError(f"{where} is not a valid JSON Schema: {e.message}") from e
    return cls(schema)


def _violation(validator: Validator, value: Any) -> str | None:
    error = next(iter(validator.iter_errors(value)), None)
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{path}: {_short(error)}"


def _short(error: SchemaViolation) -> str:
    message = str(error.message)
    return message if len(message) <= 300 else message[:300] + "..."


class AgentDirectory(Protocol):
    """Where the registry finds agents (static config, or the agent manager's served definitions)."""

    def lookup(self, tenant: str, agent_id: str) -> AgentConfig | None: ...
    def of_tenant(self, tenant: str) -> Iterable[AgentConfig]: ...


class ConfigAgents:
    def __init__(self, config_source: Callable[[], RuntimeConfig]):
        self._config_source = config_source

    def lookup(self, tenant: str, agent_id: str) -> AgentConfig | None:
        return next((a for a in self._config_source().agents if a.tenant == tenant and a.id == agent_id), None)

    def of_tenant(self, tenant: str) -> Iterable[AgentConfig]:
        return [a for a in self._config_source().agents if a.tenant == tenant]


@dataclass
class _Entry:
    spec: ToolSpec
    inputs: Validator
    outputs: Validator | None


class ToolRegistry:
    def __init__(
        self,
        config_source: Callable[[], RuntimeConfig],
        executors: Iterable[ToolExecutor],
        sources: Iterable[ToolSource] = (),
        observer: Observer | None = None,
    ):
        self._config_source = config_source
        self.executors: dict[str, ToolExecutor] = {e.kind: e for e in executors}
        self.sources = list(sources)
        self.observer = observer
        self.agents: AgentDirectory = ConfigAgents(config_source)
        self._entries: dict[str, _Entry] = {}
        self._config_id = -1
        self._discovered: dict[str, _Entry] = {}
        self._discovered_at = float("-inf")
        self._refused: dict[str, str] = {}  # discovered tools left out for an invalid schema: id -> why

    # the tool table --------------------------------------------------------------------------
    def _configured(self) -> Mapping[str, _Entry]:
        config = self._config_source()
        if id(config) != self._config_id:
            entries = {}
            for tool in config.tools:
                spec = spec_from_config(tool)
                entries[tool.id] = self._entry(spec)
            self._entries, self._config_id = entries, id(config)
        return self._entries

    def _entry(self, spec: ToolSpec) -> _Entry:
        outputs = _validator(spec.output_schema, f"tools[{spec.id}].outputSchema") if spec.output_schema else None
        return _Entry(spec, _validator(spec.input_schema, f"tools[{spec.id}].inputSchema"), outputs)

    async def _refresh_discovered(self) -> None:
        if not self.sources or time.monotonic() - self._discovered_at < DISCOVERY_REFRESH_SECONDS:
            return
        found: dict[str, _Entry] = {}
        for source in self.sources:
            try:
                specs = await source.list_tools()
            except Exception:
                log.warning("tool discovery failed for a source; its tools are unavailable", exc_info=True)
                continue
            for spec in specs:  # one tool's bad schema leaves out that tool, not its server's or others'
                try:
                    found[spec.id] = self._entry(spec)
                except ValueError as e:
                    if self._refused.get(spec.id) != str(e):
                        log.warning("a discovered tool's schema is invalid; the tool is left out",
                                    extra={"tool": spec.id, "error": str(e)})
                    self._refused[spec.id] = str(e)
        self._discovered, self._discovered_at = found, time.monotonic()

    def validate_config(self) -> None:
        """Raise ValueError when a configured schema is invalid (called at start)."""
        self._configured()

    # permissions -----------------------------------------------------------------------------
    def _agent(self, tenant: str, agent_id: str) -> AgentConfig | None:
        return self.agents.lookup(tenant, agent_id)

    @staticmethod
    def _granted(agent: AgentConfig, spec: ToolSpec, discovered: bool) -> bool:
        if agent.id not in spec.allowed_agents:
            return False
        return discovered or spec.id in agent.tools or any(spec.id in s.tools for s in agent.skills)

    def _tenant_sees(self, tenant: str, spec: ToolSpec, discovered: bool) -> bool:
        if spec.tenant is not None and spec.tenant != tenant:
            return False
        return any(self._granted(a, spec, discovered) for a in self._config_source().agents if a.tenant == tenant)

    async def allowed(self, tenant: str, agent_id: str) -> list[ToolSpec]:
        """The tools this agent may use (its own and its skills')."""
        agent = self._agent(tenant, agent_id)
        if agent is None:
            return []
        await self._refresh_discovered()
        out = [e.spec for e in self._configured().values() if self._granted(agent, e.spec, False)]
        out.extend(
            e.spec
            for e in self._discovered.values()
            if e.spec.tenant in (None, tenant) and self._granted(agent, e.spec, True)
        )
        return out

    async def resolve(self, tenant: str, agent_id: str, tool_id: str) -> tuple[_Entry | None, ToolOutcome | None]:
        """The tool's entry, or the outcome that refuses the call (unknown or forbidden)."""
        entry = self._configured().get(tool_id)
        discovered = False
        if entry is None:
            await self._refresh_discovered()
            entry, discovered = self._discovered.get(tool_id), True
        if entry is None or not self._tenant_sees(tenant, entry.spec, discovered):
            return None, ToolOutcome.failure(ErrorCode.UNKNOWN_TOOL, f"no tool named {tool_id!r}")
        agent = self._agent(tenant, agent_id)
        if agent is None or not self._granted(agent, entry.spec, discovered):
            return None, ToolOutcome.failure(ErrorCode.FORBIDDEN, f"agent {agent_id!r} may not use tool {tool_id!r}")
        return entry, None

    # calls -----------------------------------------------------------------------------------
    async def call(self, tool_id: str, args: Any, ctx: CallContext) -> ToolOutcome:
        started = time.perf_counter()
        entry, refused = await self.resolve(ctx.tenant, ctx.agent_id, tool_id)
        if entry is None:
            assert refused is not None
            return refused
        outcome = await self._run(entry, args, ctx)
        if self.observer is not None:
            self.observer(entry.spec, ctx, outcome, time.perf_counter() - started)
        return outcome

    async def _run(self, entry: _Entry, args: Any, ctx: CallContext) -> ToolOutcome:
        spec = entry.spec
        if not isinstance(args, dict):
            return ToolOutcome.failure(ErrorCode.INVALID_ARGUMENTS, "arguments must be a JSON object")
        problem = _violation(entry.inputs, args)
        if problem is not None:
            return ToolOutcome.failure(ErrorCode.INVALID_ARGUMENTS, f"arguments do not match the schema: {problem}")
        executor = self.executors.get(spec.executor)
        if executor is None:
            return ToolOutcome.failure(
                ErrorCode.EXECUTOR_UNAVAILABLE, f"the {spec.executor} executor is not available in this runtime"
            )
        outcome = await executor.call(spec, args, ctx)
        return self._checked(entry, outcome)

    @staticmethod
    def _checked(entry: _Entry, outcome: ToolOutcome) -> ToolOutcome:
        if not outcome.ok:
            return outcome
        try:
            size = len(orjson.dumps(outcome.result))
        except TypeError:
            return ToolOutcome.failure(ErrorCode.INVALID_RESULT, "the tool's result is not JSON")
        if size > entry.spec.max_result_bytes:
            return ToolOutcome.failure(
                ErrorCode.RESULT_TOO_LARGE,
                f"the result is {size} bytes, above the cap of {entry.spec.max_result_bytes}",
            )
        if entry.outputs is not None:
            problem = _violation(entry.outputs, outcome.result)
            if problem is not None:
                return ToolOutcome.failure(ErrorCode.INVALID_RESULT, f"the result does not match the schema: {problem}")
        return outcome

    async def aclose(self) -> None:
        for executor in self.executors.values():
            try:
                await executor.aclose()
            except Exception:
                log.warning("error while closing a tool executor", exc_info=True)
