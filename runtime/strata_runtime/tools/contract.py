"""What every tool executor implements, and the values that cross that boundary.

    ToolSpec      one tool as the registry knows it (id, schemas, limits, executor kind, target)
    CallContext   who calls, on whose behalf, with which idempotency key and deadline
    ToolOutcome   {ok, result, error}: what a call produced; never raises for a tool's own failure
    ToolExecutor  `call(tool, args, ctx) -> ToolOutcome`, one per executor kind (http, python, mcp)
    ToolSource    an executor that discovers its tools (MCP servers): `list_tools() -> [ToolSpec]`

The registry validates arguments against `ToolSpec.input_schema` before calling an executor and
the result against `output_schema` after it, and caps the result size; an executor only runs the
call. It returns `ToolOutcome.failure(code, message)` for a failure of the tool (timeout, bad
response, refused address, dead server) and raises only for bugs. Error codes are stable strings
from `ErrorCode`; the agent loop shows the message to the model, so it never carries a secret.

An executor must honour `ctx.deadline` (monotonic seconds, `time.monotonic()` clock): it stops
waiting at the earlier of that and `tool.timeout_seconds`, and answers `timeout`. When it can pass
an idempotency key to the tool (HTTP `Idempotency-Key` header, an MCP `_meta` field), it sends
`ctx.call_id`, which is the same for every retry and every resumption of the same call.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

ExecutorKind = Literal["http", "python", "mcp"]


class ErrorCode:
    """Stable `error.code` values of a failed tool call."""

    UNKNOWN_TOOL = "unknown_tool"  # no such tool (or not visible to this tenant)
    FORBIDDEN = "tool_forbidden"  # the tool exists for the tenant, the agent may not use it
    INVALID_ARGUMENTS = "invalid_arguments"  # args fail input_schema
    INVALID_RESULT = "invalid_result"  # result fails output_schema or is not JSON
    RESULT_TOO_LARGE = "result_too_large"  # result above max_result_bytes
    TIMEOUT = "timeout"  # no answer before the deadline
    UPSTREAM_ERROR = "upstream_error"  # the tool answered with an error (HTTP 4xx/5xx, MCP isError)
    UNREACHABLE = "unreachable"  # connection refused / reset / DNS failure
    SSRF_BLOCKED = "ssrf_blocked"  # the address is loopback/private/link-local and not allowed
    EXECUTOR_UNAVAILABLE = "executor_unavailable"  # the executor kind is not installed / server down
    CASCADE_LIMIT = "cascade_limit"  # depth / interactions / fan-out bound reached
    INTERNAL = "internal_error"


@dataclass(frozen=True)
class ToolSpec:
    """One tool. `id` is what agents, skills and models use; for MCP tools it is `server.tool`.

    `target` is executor specific: a URL template (http), `module:function` (python),
    `server/tool` (mcp). `options` carries executor-specific settings (http: method, headers
    from env refs, allowHosts; mcp: the server name) so the contract does not grow per executor.
    """

    id: str
    name: str
    description: str
    input_schema: dict[str, Any]
    executor: ExecutorKind
    target: str
    output_schema: dict[str, Any] | None = None
    timeout_seconds: float = 10.0
    max_result_bytes: int = 1_000_000
    idempotent: bool = False
    allowed_agents: frozenset[str] = frozenset()
    tenant: str | None = None  # None: every tenant's agents may be granted it
    options: dict[str, Any] = field(default_factory=dict)

    def openai_tool(self) -> dict[str, Any]:
        """The `tools[]` entry offered to an OpenAI-protocol model (function name = tool id)."""
        return {
            "type": "function",
            "function": {
                "name": openai_name(self.id),
                "description": self.description,
                "parameters": self.input_schema,
            },
        }


_PLAIN_ID = re.compile(r"[A-Za-z0-9-]+(?:_[A-Za-z0-9-]+)*")  # no `__`, no `_` at either end
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_FUNCTION_NAME = 64


def openai_name(tool_id: str) -> str:
    """The tool's OpenAI function name (`[A-Za-z0-9_-]{1,64}`), distinct for distinct ids.

    Readable when it can be: an id of dot-separated plain parts (`weather.lookup`, an MCP tool's
    `server.tool`) becomes `weather__lookup`, and since plain parts hold no `__` and never start
    or end with `_`, each `__` stands for one dot and no two such ids meet. Any other id (other
    characters, e.g. Chinese; `__` or `_` next to a dot; too long) keeps its safe characters and
    ends in 10 hex digits of its SHA-256, so ids that differ only in what was dropped still differ."""
    parts = tool_id.split(".")
    readable = "__".join(parts)
    if all(_PLAIN_ID.fullmatch(part) for part in parts) and len(readable) <= _MAX_FUNCTION_NAME:
        return readable
    digest = hashlib.sha256(tool_id.encode()).hexdigest()[:10]
    return f"{_UNSAFE.sub('_', tool_id)[:_MAX_FUNCTION_NAME - 12]}-h{digest}"


@dataclass(frozen=True)
class CallContext:
    """One call of a tool. `call_id` is the idempotency key: derived from (session, turn, step,
    call index) in the agent loop, so a resumed turn sends the same key again."""

    call_id: str
    tenant: str
    agent_id: str
    session_id: str | None = None
    depth: int = 0  # agent -> tool -> agent nesting; 1 for a call made by a top-level turn
    chain: str | None = None  # the call chain's id (a turn's), passed on so nested calls count against it
    deadline: float | None = None  # time.monotonic() value; None: the tool's own timeout only

    def remaining(self, timeout_seconds: float) -> float:
        """Seconds the executor may still wait: the tool's timeout, cut by the call's deadline."""
        if self.deadline is None:
            return timeout_seconds
        return max(0.0, min(timeout_seconds, self.deadline - time.monotonic()))


@dataclass(frozen=True)
class ToolError:
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class ToolOutcome:
    """`{ok, result, error}` of one call; `result` is any JSON value when ok."""

    ok: bool
    result: Any = None
    error: ToolError | None = None

    @classmethod
    def success(cls, result: Any) -> ToolOutcome:
        return cls(ok=True, result=result)

    @classmethod
    def failure(cls, code: str, message: str) -> ToolOutcome:
        return cls(ok=False, error=ToolError(code, message))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "result": self.result, "error": self.error.as_dict() if self.error else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolOutcome:
        error = data.get("error")
        return cls(
            ok=bool(data.get("ok")),
            result=data.get("result"),
            error=ToolError(str(error["code"]), str(error["message"])) if error else None,
        )


@runtime_checkable
class ToolExecutor(Protocol):
    """Runs calls of one executor kind. Must be safe to call concurrently."""

    kind: ExecutorKind

    async def call(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> ToolOutcome: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ToolSource(Protocol):
    """An executor whose tools are discovered rather than configured (MCP servers).

    `list_tools` returns the tools currently available (a dead server contributes none and is
    retried with back-off by the source itself); their `executor` is the source's kind and their
    `allowed_agents`/`tenant` come from the server's config entry.
    """

    async def list_tools(self) -> list[ToolSpec]: ...
