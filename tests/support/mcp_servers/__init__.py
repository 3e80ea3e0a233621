"""Real MCP servers built with the `mcp` SDK, run as their own processes by the MCP tests and bench."""
