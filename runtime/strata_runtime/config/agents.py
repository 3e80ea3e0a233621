"""Agents, their skills, tools and MCP servers, and the memory engine's settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from strata_runtime.config.base import ConfigModel


class SkillConfig(ConfigModel):
    name: str = Field(min_length=1)
    description: str = ""
    keywords: list[str] = []
    capabilities: list[str] = []
    instructions: str = ""
    tools: list[str] = []
    version: str = "1"


class AgentLimits(ConfigModel):
    max_tool_steps: int = Field(8, ge=1, le=100)
    max_interactions_per_session: int = Field(200, ge=1, le=1_000_000)
    max_depth: int = Field(5, ge=1, le=100)


class AgentConfig(ConfigModel):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="The chatbot id.")
    tenant: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: str = Field(min_length=1, description="Logical model name from `models`.")
    system_prompt: str = ""
    skills: list[SkillConfig] = []
    tools: list[str] = []
    limits: AgentLimits = AgentLimits()
    caching_disabled: bool = False


class ToolConfig(ConfigModel):
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    description: str = ""
    input_schema: dict[str, Any] = {"type": "object"}
    output_schema: dict[str, Any] | None = None
    executor: Literal["http", "python", "mcp"]
    target: str = Field(min_length=1, description="URL, allow-listed entry point, or mcpServer/tool.")
    allowed_agents: list[str] = Field([], description="Agent ids that may call the tool; empty: none.")
    timeout_seconds: float = Field(10.0, gt=0, le=600)
    idempotent: bool = Field(False, description="Safe to retry on failure.")


class McpServerConfig(ConfigModel):
    name: str = Field(min_length=1)
    transport: Literal["http", "stdio"] = "http"
    url: str | None = None
    command: list[str] = []
    allowed_agents: list[str] = []

    @model_validator(mode="after")
    def _transport_has_its_address(self) -> McpServerConfig:
        if self.transport == "http" and not self.url:
            raise ValueError("transport 'http' needs url")
        if self.transport == "stdio" and not self.command:
            raise ValueError("transport 'stdio' needs command")
        return self


class LongTermMemoryConfig(ConfigModel):
    enabled: bool = True
    collection: str = Field("strata_memory", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    top_k: int = Field(5, ge=1, le=100)


class MemoryConfig(ConfigModel):
    l1_max_sessions: int = Field(10000, ge=1, le=10_000_000, description="In-process session pool size.")
    buffer_turns: int = Field(10, ge=2, le=1000, description="Turns buffered before archiving to L3.")
    checkpoint_ttl_seconds: int = Field(86400, ge=60)
    session_idle_seconds: int = Field(300, ge=1, description="Idle time before a session is released.")
    stream_stale_seconds: float = Field(
        5.0, gt=0.2, le=300,
        description="A streaming answer whose producer sent no heartbeat for this long is taken over by "
        "the pod a client resumes on (heartbeats every quarter of it).",
    )
    long_term: LongTermMemoryConfig = LongTermMemoryConfig()
