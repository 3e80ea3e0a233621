"""The runtime config file (SPEC 6.2): the one model the operator renders and the runtime loads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from strata_runtime.config.agents import AgentConfig, McpServerConfig, MemoryConfig, ToolConfig
from strata_runtime.config.base import ConfigModel
from strata_runtime.config.llm import ModelConfig, RateLimitsConfig, UsageConfig
from strata_runtime.config.policies import CachePolicySpec, RoutingPolicySpec
from strata_runtime.config.stores import StoresConfig


class ServerConfig(ConfigModel):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    drain_seconds: float = Field(30.0, ge=0, le=3600, description="Bound on finishing in-flight work.")


class ApiKeyRef(ConfigModel):
    tenant: str = Field(min_length=1)
    key_env: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ApiKeyRef:
        if bool(self.key_env) == bool(self.key_file):
            raise ValueError("set exactly one of keyEnv or keyFile")
        return self


class AuthConfig(ConfigModel):
    mode: Literal["apiKey", "none"] = Field(
        "apiKey", description="none is for local development only and logs a warning."
    )
    api_keys: list[ApiKeyRef] = []
    internal_token_env: str | None = "STRATA_INTERNAL_TOKEN"


LOCAL_EMBEDDING_MODELS = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


class EmbedderConfig(ConfigModel):
    provider: Literal["local", "openai"] = "local"
    model: str = "all-MiniLM-L6-v2"
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_seconds: float = Field(2.0, gt=0, le=60, description="Deadline per embedding call.")
    dimensions: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _provider_can_serve_the_model(self) -> EmbedderConfig:
        if self.provider == "local" and self.model not in LOCAL_EMBEDDING_MODELS:
            raise ValueError(f"the local provider only ships {LOCAL_EMBEDDING_MODELS[0]}, not {self.model!r}")
        if self.provider == "openai" and not self.base_url:
            raise ValueError("provider openai needs baseUrl")
        return self


class AgentRuntimeSpec(ConfigModel):
    """What an AgentDeployment's `spec.runtime` carries: the agent-facing part of the file."""

    models: list[ModelConfig] = []
    agents: list[AgentConfig] = []
    tools: list[ToolConfig] = []
    mcp_servers: list[McpServerConfig] = []
    memory: MemoryConfig = MemoryConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    usage: UsageConfig = UsageConfig()


class RuntimeConfig(AgentRuntimeSpec):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    stores: StoresConfig = StoresConfig()
    cache: CachePolicySpec = CachePolicySpec()
    routing: RoutingPolicySpec = RoutingPolicySpec()

    @model_validator(mode="after")
    def _references_resolve(self) -> RuntimeConfig:
        model_names = [m.name for m in self.models]
        _no_duplicates("models", model_names)
        _no_duplicates("tools", [t.id for t in self.tools])
        _no_duplicates("mcpServers", [s.name for s in self.mcp_servers])
        _no_duplicates("agents", [f"{a.tenant}/{a.id}" for a in self.agents])
        known_models = set(model_names)
        for model in self.models:
            for fallback in model.fallbacks:
                if fallback not in known_models:
                    raise ValueError(f"models[{model.name}].fallbacks names unknown model {fallback!r}")
        known_tools = {t.id for t in self.tools}
        for agent in self.agents:
            if agent.model not in known_models:
                raise ValueError(f"agents[{agent.id}].model names unknown model {agent.model!r}")
            for tool in [*agent.tools, *(t for s in agent.skills for t in s.tools)]:
                if tool not in known_tools:
                    raise ValueError(f"agents[{agent.id}] uses unknown tool {tool!r}")
        if self.routing.classifier.model and self.routing.classifier.model not in known_models:
            raise ValueError(f"routing.classifier.model names unknown model {self.routing.classifier.model!r}")
        if self.auth.mode == "apiKey" and not self.auth.api_keys:
            raise ValueError("auth.mode is apiKey but auth.apiKeys is empty (use mode: none for local dev)")
        return self


def _no_duplicates(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{field}: duplicate name {name!r}")
        seen.add(name)
