"""MCP client: the tools of the configured `mcpServers`, discovered and called with the `mcp` SDK.

One `McpServerLink` (mcp_link.py) per server owns its connection in a background task. `McpTools`
is the toolcore's `mcp` executor and a `ToolSource` over all of them. The SDK is imported only
when a server is configured (importing it takes seconds on a busy machine).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from strata_runtime.config import McpServerConfig
from strata_runtime.tools.contract import CallContext, ErrorCode, ToolOutcome, ToolSpec

if TYPE_CHECKING:
    from strata_runtime.metrics import McpServerSnapshot
    from strata_runtime.tools.mcp_link import McpServerLink


class McpTools:
    """The `mcp` executor and tool source over every configured MCP server."""

    kind: Literal["mcp"] = "mcp"

    def __init__(self, servers: Sequence[McpServerConfig], env: Mapping[str, str]):
        self.links: dict[str, McpServerLink] = {}
        if servers:
            from strata_runtime.tools.mcp_link import McpServerLink

            self.links = {config.name: McpServerLink(config, env) for config in servers}

    async def start(self) -> None:
        for link in self.links.values():
            link.start()

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links.values()))

    async def aclose(self) -> None:
        await self.close()

    async def list_tools(self) -> list[ToolSpec]:
        """Every server's tools as last discovered, including a server's that is down now: a call of one
        then answers `executor_unavailable` (and says why) instead of `unknown_tool`."""
        return [tool for link in self.links.values() for tool in link.tools]

    def available_tools(self) -> list[ToolSpec]:
        """The tools of the servers connected now."""
        return [tool for link in self.links.values() if link.state == "ready" for tool in link.tools]

    async def call(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> ToolOutcome:
        server, _, name = tool.target.partition("/")
        link = self.links.get(server)
        if link is None or not name:
            return ToolOutcome.failure(ErrorCode.UNKNOWN_TOOL, f"no MCP server {server!r} is configured")
        return await link.call(name, args, within=ctx.remaining(tool.timeout_seconds), call_id=ctx.call_id)

    def snapshots(self) -> list[McpServerSnapshot]:
        return [link.snapshot() for link in self.links.values()]

    def status(self) -> list[dict[str, Any]]:
        return [link.status() for link in self.links.values()]
