"""Discovered tools (an MCP server's) and their schemas in the registry: the draft a schema names is
the draft it is validated under, and one tool's invalid schema leaves out that tool only."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from strata_runtime.config import RuntimeConfig
from strata_runtime.tools.contract import CallContext, ErrorCode, ToolOutcome, ToolSpec
from strata_runtime.tools.registry import ToolRegistry

pytestmark = pytest.mark.unit

DRAFT_07 = "http://json-schema.org/draft-07/schema#"
CONFIG = RuntimeConfig.model_validate({
    "auth": {"mode": "none"}, "agents": [{"id": "support", "tenant": "acme", "model": "m"}],
    "models": [{"name": "m", "provider": "openai", "baseUrl": "http://127.0.0.1:9", "apiKeyEnv": "K"}]})


def spec(name: str, schema: dict[str, Any]) -> ToolSpec:
    return ToolSpec(id=f"srv.{name}", name=name, description="", input_schema=schema, executor="mcp",
                    target=f"srv/{name}", allowed_agents=frozenset({"support"}))


class Server:
    """What the MCP client offers the registry: the discovered tools, and calls of them (echoing the args)."""

    kind: Literal["mcp"] = "mcp"

    def __init__(self, tools: list[ToolSpec]):
        self.tools = tools

    async def list_tools(self) -> list[ToolSpec]:
        return self.tools

    async def call(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> ToolOutcome:
        return ToolOutcome.success(args)

    async def aclose(self) -> None:
        return None


def registry(*tools: ToolSpec) -> ToolRegistry:
    server = Server(list(tools))
    return ToolRegistry(lambda: CONFIG, [server], [server])


async def call(tools: ToolRegistry, tool_id: str, args: dict[str, Any]) -> ToolOutcome:
    return await tools.call(tool_id, args, CallContext(call_id="c", tenant="acme", agent_id="support"))


async def test_a_draft_07_schema_is_validated_as_draft_07() -> None:
    # a tuple in draft-07 (`items` as an array): not a valid 2020-12 schema, where `items` is one schema
    pair = spec("pair", {"$schema": DRAFT_07, "type": "object", "required": ["pair"], "properties": {
        "pair": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]}}})
    tools = registry(pair)
    assert [s.id for s in await tools.allowed("acme", "support")] == ["srv.pair"]
    assert (await call(tools, "srv.pair", {"pair": ["a", 1]})).ok
    refused = await call(tools, "srv.pair", {"pair": [1, "a"]})
    assert refused.error is not None and refused.error.code == ErrorCode.INVALID_ARGUMENTS
    assert "pair/0" in refused.error.message


async def test_a_tool_with_an_invalid_schema_is_left_out_alone() -> None:
    tools = registry(spec("broken", {"type": "object", "properties": {"x": {"type": 5}}}),
                     spec("good", {"type": "object", "properties": {"x": {"type": "integer"}}}))
    assert [s.id for s in await tools.allowed("acme", "support")] == ["srv.good"]  # listed after the broken one
    assert await call(tools, "srv.good", {"x": 1}) == ToolOutcome.success({"x": 1})
    unknown = await call(tools, "srv.broken", {"x": 1})
    assert unknown.error is not None and unknown.error.code == ErrorCode.UNKNOWN_TOOL
