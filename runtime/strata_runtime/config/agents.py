"""Agents, their skills, tools and MCP servers, and the memory engine's settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from strata_runtime.config.base import ConfigModel
from strata_runtime.config.llm import MAX_MODEL_NAME

MAX_TOOL_TARGET = 2048


class SkillConfig(ConfigModel):
    """A skill of an agent: what it is for (embedded for semantic routing) and how to perform it."""

    name: str = Field(min_length=1, description="Skill name, unique within the agent; routing rules name it.")
    description: str = Field("", description="What the skill does; embedded (with keywords and capabilities) "
                             "for the semantic router.")
    keywords: list[str] = Field([], description="Words typical of requests for this skill; part of its embedding.")
    capabilities: list[str] = Field([], description="Capability tags of the skill; part of its embedding.")
    examples: list[str] = Field([], max_length=1000, description="Example requests for this skill; each is "
                                "embedded, and a request is compared with them too.")
    instructions: str = Field("", description="Instructions added to the prompt when the skill is chosen.")
    tools: list[str] = Field([], description="Tool ids (from `tools`) the skill may call.")
    version: str = Field("1", description="Skill version; a new version re-computes its routing embedding.")


class AgentLimits(ConfigModel):
    """Bounds on the work one agent may do."""

    max_tool_steps: int = Field(8, ge=1, le=100, description="Tool calls per answer before the agent loop stops.")
    max_interactions_per_session: int = Field(
        200, ge=1, le=1_000_000, description="Turns a single session may have."
    )
    max_depth: int = Field(5, ge=1, le=100, description="Nesting depth of agents or tools calling each other.")
    max_fan_out: int = Field(
        32, ge=1, le=10_000, description="Tool calls one turn, or one chain of agents and tools calling each "
        "other, may make in total."
    )


class AgentConfig(ConfigModel):
    """One agent (chatbot) of a tenant."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="The chatbot id.")
    tenant: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                        description="The tenant that owns the agent; only that tenant's API keys may use it.")
    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME, description="Logical model name from `models`.")
    system_prompt: str = Field("", description="System message put before every conversation.")
    skills: list[SkillConfig] = Field([], description="Skills the router can pick for a request.")
    tools: list[str] = Field([], description="Tool ids (from `tools`) the agent may call directly.")
    limits: AgentLimits = Field(AgentLimits(), description="Bounds on tool steps, turns and nesting.")
    caching_disabled: bool = Field(False, description="true: this agent's requests never use the response cache.")

    @model_validator(mode="after")
    def _skill_names_unique(self) -> AgentConfig:
        seen: set[str] = set()
        for skill in self.skills:
            if skill.name in seen:
                raise ValueError(f"skills: duplicate skill name {skill.name!r}")
            seen.add(skill.name)
        return self


class ToolConfig(ConfigModel):
    """A tool agents may call (OpenAI tool calling)."""

    id: str = Field(min_length=1, description="Tool id that agents and skills refer to.")
    name: str = Field(min_length=1, description="Function name shown to the model.")
    description: str = Field("", description="What the tool does, shown to the model.")
    input_schema: dict[str, Any] = Field(
        {"type": "object"}, description="JSON Schema of the arguments; calls are validated against it."
    )
    output_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema of the result; validated when set."
    )
    executor: Literal["http", "python", "mcp"] = Field(
        description="http: POST to a URL; python: an allow-listed entry point; mcp: a tool of an MCP server."
    )
    target: str = Field(min_length=1, max_length=MAX_TOOL_TARGET,
                        description="URL, allow-listed entry point, or mcpServer/tool (at most 2048 characters).")
    allowed_agents: list[str] = Field([], description="Agent ids that may call the tool; empty: none.")
    timeout_seconds: float = Field(10.0, gt=0, le=600, description="Deadline of one tool call.")
    idempotent: bool = Field(False, description="Safe to retry on failure (http: GET, HEAD, PUT, DELETE and "
                             "OPTIONS are retried anyway).")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(
        "POST", description="http: request method; GET and DELETE send the arguments as query parameters."
    )
    headers_env: dict[str, str] = Field(
        {}, description="http: request headers whose values come from environment variables (header name to "
        "variable name), so secrets never appear in the config."
    )
    allow_hosts: list[str] = Field(
        [], description="http: host names (or IP addresses) the tool may reach even when they resolve to "
        "loopback, private or link-local addresses; everything else such is refused."
    )
    max_result_bytes: int = Field(1_000_000, ge=1, le=64_000_000, description="Largest result accepted, in bytes.")

    @model_validator(mode="after")
    def _target_fits_executor(self) -> ToolConfig:
        if self.executor == "http" and not self.target.startswith(("http://", "https://")):
            raise ValueError(f"tools[{self.id}]: executor http needs an http(s) URL as target")
        if self.executor == "python" and ":" not in self.target:
            raise ValueError(f"tools[{self.id}]: executor python needs target 'module:function'")
        return self


class PythonToolsConfig(ConfigModel):
    """Which Python functions `executor: python` tools may run (set by whoever deploys the runtime)."""

    allowed_entry_points: list[str] = Field(
        [], description="`module:function` names, or `module:*` for every public function of a module; a "
        "python tool whose target is not listed is refused."
    )
    max_workers: int = Field(4, ge=1, le=64, description="Threads running python tools off the event loop.")


class McpServerConfig(ConfigModel):
    """A Model Context Protocol server whose tools agents may call.

    Its tools are discovered at run time and get the ids `<name>.<tool>`; a `tools[]` entry with
    executor `mcp` names one of them as target `<name>/<tool>`. Secrets reach the server only by
    reference to the runtime's environment (`envFromRuntime`, `headersEnv`), never inline.
    """

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
                      description="Server name; its tools get the ids `name.tool` (target `name/tool`).")
    transport: Literal["http", "stdio"] = Field(
        "http", description="http: streamable HTTP at url; stdio: a child process started with command."
    )
    url: str | None = Field(None, description="Server URL (transport http).")
    command: list[str] = Field([], description="Program and arguments (transport stdio).")
    env: dict[str, str] = Field({}, description="Environment of the stdio child (not secrets: use envFromRuntime); "
                                "besides these it gets only HOME, LOGNAME, PATH, SHELL, TERM and USER.")
    env_from_runtime: dict[str, str] = Field(
        {}, description="stdio: child variables whose values come from the runtime's environment variables "
        "(child variable name to runtime variable name), so secrets never appear in the config."
    )
    headers_env: dict[str, str] = Field(
        {}, description="http: request headers whose values come from environment variables (header name to "
        "variable name), e.g. {Authorization: MCP_TOKEN} with MCP_TOKEN='Bearer ...'."
    )
    tenant: str | None = Field(None, description="Only this tenant's agents may use the server; unset: the "
                               "agents in allowedAgents, of any tenant.")
    allowed_agents: list[str] = Field([], description="Agent ids that may use the server's tools; empty: none.")
    timeout_seconds: float = Field(30.0, gt=0, le=600, description="Deadline of one tool call on this server.")
    connect_timeout_seconds: float = Field(
        15.0, gt=0, le=600, description="Deadline of connecting and listing the tools; a slower server is "
        "retried in the background (start-up never waits for it)."
    )
    probe_interval_seconds: float = Field(
        15.0, gt=0, le=3600, description="A connected server's tools are listed again this often (the liveness "
        "probe; changed tools are picked up); a failure reconnects."
    )
    reconnect_max_seconds: float = Field(
        30.0, gt=0, le=3600, description="Cap of the reconnect back-off (0.5 s doubled per failed attempt, "
        "with jitter)."
    )

    @model_validator(mode="after")
    def _transport_has_its_address(self) -> McpServerConfig:
        if self.transport == "http" and not self.url:
            raise ValueError("transport 'http' needs url")
        if self.transport == "stdio" and not self.command:
            raise ValueError("transport 'stdio' needs command")
        return self


class LongTermMemoryConfig(ConfigModel):
    """L3: conversation summaries in the vector store, recalled into later sessions."""

    enabled: bool = Field(True, description="Archive summaries and recall them.")
    collection: str = Field("strata_memory", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                            description="Vector store collection holding the summaries.")
    top_k: int = Field(5, ge=1, le=100, description="Summaries recalled per request.")


class MemoryConfig(ConfigModel):
    """Session memory: L1 in-process pool, L2 Redis checkpoints, L3 long-term vector memory."""

    l1_max_sessions: int = Field(10000, ge=1, le=10_000_000, description="In-process session pool size.")
    buffer_turns: int = Field(10, ge=2, le=1000, description="Turns buffered before archiving to L3.")
    checkpoint_ttl_seconds: int = Field(86400, ge=60, description="Lifetime of a session checkpoint in Redis.")
    session_idle_seconds: int = Field(300, ge=1, description="Idle time before a session is released.")
    stream_stale_seconds: float = Field(
        5.0, gt=0.2, le=300,
        description="A streaming answer whose producer sent no heartbeat for this long is taken over by "
        "the pod a client resumes on (heartbeats every quarter of it).",
    )
    resume_window_seconds: int = Field(
        300, ge=1, le=86400,
        description="How long a finished answer's stream record (its chunks) is kept for clients resuming it "
        "with Last-Event-ID; later, a resume of that turn gets its done event alone, read from the session.",
    )
    long_term: LongTermMemoryConfig = Field(LongTermMemoryConfig(), description="Long-term (L3) memory.")
    max_buffer_turns: int | None = Field(
        None, ge=2, le=100_000,
        description="Cap on a session's unarchived turns in Redis (default 4 x bufferTurns): beyond it the "
        "oldest turns move to the SQL history without a summary instead of waiting for a failing archive.",
    )
    archive_max_attempts: int = Field(
        4, ge=1, le=100, description="Summary attempts per batch; after that the batch goes to the SQL "
        "history without a summary.",
    )
    archive_retry_seconds: float = Field(
        5.0, gt=0, le=3600, description="Back-off after a failed archive, doubled per failure (capped at 10 "
        "minutes); retried only when the session gets a new turn.",
    )

    @model_validator(mode="after")
    def _buffer_cap_holds_a_batch(self) -> MemoryConfig:
        if self.max_buffer_turns is not None and self.max_buffer_turns < self.buffer_turns:
            raise ValueError("memory.maxBufferTurns must be at least memory.bufferTurns")
        return self

    @property
    def buffer_cap(self) -> int:
        return self.max_buffer_turns if self.max_buffer_turns is not None else 4 * self.buffer_turns
