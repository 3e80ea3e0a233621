"""A small MCP server (the `mcp` SDK's MCPServer) over stdio or streamable HTTP.

    python -m tests.support.mcp_servers.demo stdio
    python -m tests.support.mcp_servers.demo http --port 8931 [--name demo]

Tools: `echo`, `add`, `sleep` (answers after N seconds; writes `<name>.sleeping` into
$MCP_DEMO_DIR when it starts, so a test knows a call is in flight), `whoami` (the process id:
a restarted server answers with another one), `fail` (a tool error), `refuse` (a JSON-RPC error
-32000 instead of a result), `env` (one variable of the
server's environment, to check env references reach a stdio child), `header` (a request
header, to check header references reach an HTTP server), `idempotency_key` (the key in
`_meta`). Every call is appended to $MCP_DEMO_DIR/calls.log when that variable is set.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import anyio
from mcp import MCPError
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError


def _record(name: str, detail: str = "") -> None:
    folder = os.environ.get("MCP_DEMO_DIR")
    if folder:
        with (Path(folder) / "calls.log").open("a") as log:
            log.write(f"{os.getpid()} {name} {detail}\n")


def build(name: str) -> MCPServer:
    server = MCPServer(name, log_level="WARNING")

    @server.tool(description="Echo the text back.")
    def echo(text: str) -> str:
        _record("echo", text)
        return text

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        _record("add", f"{a}+{b}")
        return a + b

    @server.tool(description="Answer after `seconds` seconds.")
    async def sleep(seconds: float) -> str:
        _record("sleep", str(seconds))
        folder = os.environ.get("MCP_DEMO_DIR")
        if folder:
            (Path(folder) / f"{name}.sleeping").write_text(str(time.time()))
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool(description="The server's process id.")
    def whoami() -> dict[str, int]:
        return {"pid": os.getpid()}

    @server.tool(description="Always fails.")
    def fail(reason: str = "broken") -> str:
        raise ToolError(f"tool failed: {reason}")

    @server.tool(description="Refuses every call with a JSON-RPC error of its own (-32000).")
    def refuse(reason: str = "quota exceeded") -> str:
        raise MCPError(code=-32000, message=f"refused: {reason}")

    @server.tool(description="The value of an environment variable of the server process.")
    def env(name: str) -> str:
        return os.environ.get(name, "")

    @server.tool(description="The value of a request header (HTTP only; empty on stdio).")
    def header(name: str, ctx: Context) -> str:
        return (ctx.headers or {}).get(name.lower(), "")

    @server.tool(description="The idempotency key the caller sent in the request's _meta.")
    def idempotency_key(ctx: Context) -> str:
        meta = ctx.request_context.meta if ctx.request_context is not None else None
        return str((meta or {}).get("strata.dev/idempotency-key", ""))

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--name", default="demo")
    args = parser.parse_args()
    server = build(args.name)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
