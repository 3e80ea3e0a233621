"""The agent loop: model → tool calls → results fed back → model, until an answer or a bound.

Each step asks the model (through the gateway, with the agent's tools offered) for its next
message. Tool calls come as OpenAI `tool_calls` (several per step run in parallel) or, for models
without tool calling, as lines `TOOL: <tool id> {json arguments}` in the text. A call the model
may not make (unknown, forbidden, arguments failing the schema) is not an error of the turn: the
model is told what was wrong and may try again, bounded by `maxToolSteps`. A turn that reaches
`maxToolSteps` still asking for tools ends with status `max_tool_steps`; one that exceeds
`maxFanOut` calls ends with `cascade_limit`.

Exactly once. Call ids are derived from (tenant, session, turn, step, call index), and the
model's message of each step and each call's outcome are written to the tool ledger in L2 before
anything depends on them (see tools/ledger.py). A turn resumed on another pod replays the recorded
steps and outcomes instead of asking the model or running the tools again; a call that was in
flight when its pod died has no outcome yet and is sent again with the same id (the HTTP
`Idempotency-Key`), so a tool that deduplicates by that key runs it once.

What the loop yields is the turn's stream: answer text, and tool events encoded as strings that
start with `EVENT_MARK` (readers turn them into `tool_call` / `tool_result` / `status` events).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from strata_runtime.config.agents import AgentConfig
from strata_runtime.gateway.contract import CallContext as GatewayContext
from strata_runtime.gateway.contract import ChatGateway
from strata_runtime.tools.cascade import CascadeGuard
from strata_runtime.tools.contract import CallContext, ErrorCode, ToolOutcome, ToolSpec, openai_name
from strata_runtime.tools.ledger import ToolLedger, TurnRecord
from strata_runtime.tools.registry import ToolRegistry

EVENT_MARK = "\x1e"
_TEXT_CALL = re.compile(r"^[ \t]*TOOL:[ \t]*([A-Za-z0-9_.:/-]+)[ \t]*", re.MULTILINE)
_DECODER = json.JSONDecoder()


def encode_event(kind: str, data: dict[str, Any]) -> str:
    return EVENT_MARK + orjson.dumps({"type": kind, **data}).decode()


def decode_event(text: str) -> dict[str, Any] | None:
    if not text.startswith(EVENT_MARK):
        return None
    event: dict[str, Any] = orjson.loads(text[1:])
    return event


def answer_text(pieces: list[str]) -> str:
    """The answer of a turn: its stream without the tool events."""
    return "".join(p for p in pieces if not p.startswith(EVENT_MARK))


def call_id(tenant: str, session_id: str, seq: int, step: int, index: int) -> str:
    digest = hashlib.sha256(f"{tenant}\x00{session_id}\x00{seq}\x00{step}\x00{index}".encode()).hexdigest()
    return "tc_" + digest[:32]


@dataclass(frozen=True)
class PlannedCall:
    index: int
    tool_id: str
    arguments: Any  # the parsed arguments, or None when they were not JSON
    model_call_id: str | None  # the id the model gave the call (OpenAI tool calling)
    problem: str | None = None


@dataclass(frozen=True)
class TurnRef:
    tenant: str
    session_id: str
    seq: int
    agent: AgentConfig
    tools: list[ToolSpec]
    depth: int = 0
    chain: str | None = None  # the call chain the turn belongs to (X-Strata-Chain); default: the turn itself

    @property
    def chain_id(self) -> str:
        return self.chain or f"{self.tenant}:{self.session_id}:{self.seq}"


def _parse_arguments(raw: Any) -> tuple[Any, str | None]:
    if isinstance(raw, dict):
        return raw, None
    try:
        return orjson.loads(raw or "{}"), None
    except (orjson.JSONDecodeError, TypeError):
        return None, "the arguments are not valid JSON"


def plan_calls(message: dict[str, Any], names: dict[str, str]) -> list[PlannedCall]:
    """The tool calls in a model message: OpenAI `tool_calls`, else `TOOL:` lines in the text."""
    calls: list[PlannedCall] = []
    for i, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        name = str(function.get("name") or "")
        args, problem = _parse_arguments(function.get("arguments"))
        calls.append(PlannedCall(i, names.get(name, name), args, str(call.get("id") or f"call_{i}"), problem))
    if calls:
        return calls
    text = message.get("content") or ""
    for i, match in enumerate(_TEXT_CALL.finditer(text)):
        rest = text[match.end() :]
        try:
            args, _ = _DECODER.raw_decode(rest) if rest.startswith("{") else ({}, 0)
            problem = None
        except ValueError:
            args, problem = None, "the arguments are not valid JSON"
        calls.append(PlannedCall(i, names.get(match.group(1), match.group(1)), args, None, problem))
    return calls


def _assistant(message: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        kept["tool_calls"] = [
            {
                "id": c.get("id"),
                "type": "function",
                "function": {
                    "name": (c.get("function") or {}).get("name"),
                    "arguments": (c.get("function") or {}).get("arguments"),
                },
            }
            for c in message["tool_calls"]
        ]
    return kept


def _fed_back(outcome: ToolOutcome) -> str:
    if outcome.ok:
        return orjson.dumps(outcome.result).decode()
    assert outcome.error is not None
    return orjson.dumps({"error": outcome.error.as_dict()}).decode()


class ToolLoop:
    def __init__(self, registry: ToolRegistry, ledger: ToolLedger, cascade: CascadeGuard):
        self.registry = registry
        self.ledger = ledger
        self.cascade = cascade

    async def run(
        self, gateway: ChatGateway, body: dict[str, Any], gctx: GatewayContext, turn: TurnRef
    ) -> AsyncIterator[str]:
        names = {openai_name(t.id): t.id for t in turn.tools}
        offered = {**body, "tools": [t.openai_tool() for t in turn.tools]}
        messages = list(body["messages"])
        record = await self.ledger.load(turn.tenant, turn.session_id, turn.seq)
        limit = turn.agent.limits.max_tool_steps
        for step in range(limit + 1):
            message = record.steps.get(step)
            if message is None:
                message = await self._ask(
                    gateway, {**offered, "messages": messages}, gctx, turn, step=step, names=names
                )
            calls = plan_calls(message, names)
            if not calls:
                yield str(message.get("content") or "")
                return
            if step == limit:
                await self.ledger.record_status(turn.tenant, turn.session_id, turn.seq, "max_tool_steps")
                yield encode_event("status", {"status": "max_tool_steps", "steps": limit})
                yield f"Stopped: the agent reached its limit of {limit} tool steps without a final answer."
                return
            for call in calls:
                yield encode_event(
                    "tool_call",
                    {
                        "id": call_id(turn.tenant, turn.session_id, turn.seq, step, call.index),
                        "tool": call.tool_id,
                        "arguments": call.arguments,
                        "step": step,
                    },
                )
            outcomes = await asyncio.gather(*(self._run_call(turn, step, c, record) for c in calls))
            for call, outcome in zip(calls, outcomes, strict=True):
                yield encode_event(
                    "tool_result",
                    {
                        "id": call_id(turn.tenant, turn.session_id, turn.seq, step, call.index),
                        "tool": call.tool_id,
                        **outcome.as_dict(),
                    },
                )
            messages.extend(_feedback(message, calls, outcomes))

    async def _ask(
        self,
        gateway: ChatGateway,
        body: dict[str, Any],
        gctx: GatewayContext,
        turn: TurnRef,
        *,
        step: int,
        names: dict[str, str],
    ) -> dict[str, Any]:
        result = await gateway.complete(body, gctx)
        choices = result.response.get("choices") or [{}]
        message = _assistant(choices[0].get("message") or {})
        calls = plan_calls(message, names)
        recorded = self.ledger.record_step(turn.tenant, turn.session_id, turn.seq, step, message)
        if not calls or step >= turn.agent.limits.max_tool_steps:
            return await recorded
        counted = self.cascade.count_calls(turn.chain_id, len(calls), turn.agent.limits)
        stored: dict[str, Any]
        stored, _ = await asyncio.gather(recorded, counted)  # two keys in two slots: one round trip of wall time
        return stored

    async def _run_call(self, turn: TurnRef, step: int, call: PlannedCall, record: TurnRecord) -> ToolOutcome:
        ident = call_id(turn.tenant, turn.session_id, turn.seq, step, call.index)
        recorded = record.outcomes.get(ident)
        if recorded is not None:
            return recorded
        if call.problem is not None:
            outcome = ToolOutcome.failure(ErrorCode.INVALID_ARGUMENTS, call.problem)
        else:
            ctx = CallContext(
                call_id=ident,
                tenant=turn.tenant,
                agent_id=turn.agent.id,
                session_id=turn.session_id,
                depth=turn.depth + 1,
                chain=turn.chain_id,
            )
            outcome = await self.registry.call(call.tool_id, call.arguments, ctx)
        return await self.ledger.record_outcome(turn.tenant, turn.session_id, turn.seq, ident, outcome)


def _feedback(message: dict[str, Any], calls: list[PlannedCall], outcomes: list[ToolOutcome]) -> list[dict[str, Any]]:
    """The messages that give the model its calls' results."""
    if message.get("tool_calls"):
        return [
            message,
            *(
                {"role": "tool", "tool_call_id": c.model_call_id, "content": _fed_back(o)}
                for c, o in zip(calls, outcomes, strict=True)
            ),
        ]
    lines = [f"TOOL RESULT {c.tool_id}: {_fed_back(o)}" for c, o in zip(calls, outcomes, strict=True)]
    return [
        {"role": "assistant", "content": message.get("content") or ""},
        {"role": "user", "content": "\n".join(lines)},
    ]


class ToolTrace:
    """The tool events of a turn, folded into its JSON answer."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}
        self.status: str | None = None

    def add(self, event: dict[str, Any] | None) -> None:
        if event is None:
            return
        kind = event.pop("type", None)
        if kind == "status":
            self.status = str(event.get("status"))
        elif kind in ("tool_call", "tool_result"):
            self.calls.setdefault(str(event.get("id")), {}).update(event)

    def into(self, result: dict[str, Any]) -> None:
        if self.calls:
            result["tool_calls"] = list(self.calls.values())
        if self.status:
            result["status"] = self.status

    def pieces(self, pieces: list[str]) -> ToolTrace:
        for piece in pieces:
            self.add(decode_event(piece))
        return self
