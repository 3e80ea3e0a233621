"""The runtime config file: the one model the operator renders and the runtime loads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from strata_runtime.config.agents import AgentConfig, McpServerConfig, MemoryConfig, PythonToolsConfig, ToolConfig
from strata_runtime.config.base import ConfigModel
from strata_runtime.config.http import HttpLimitsConfig
from strata_runtime.config.llm import MAX_MODEL_NAME, ModelConfig, RateLimitsConfig, UsageConfig
from strata_runtime.config.policies import CachePolicySpec, RoutingPolicySpec
from strata_runtime.config.stores import StoresConfig


class ServerConfig(ConfigModel):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    drain_seconds: float = Field(
        30.0, ge=0, le=3600, description="After SIGTERM: bound on finishing in-flight work (0: no bound).")
    keep_alive_drain_seconds: float = Field(
        6.0, ge=0, le=600,
        description="After SIGTERM (within drainSeconds): how long requests still arriving, on new or kept-alive "
        "connections, are served, each answer with `Connection: close` so the client reconnects to another "
        "pod; then the listener and idle connections close. Longer than the idle-connection expiry of common "
        "HTTP clients (5 s in httpx, so in the OpenAI Python SDK): a connection still idle then is one they "
        "dropped.")
    session_depth_window_seconds: float = Field(
        60.0, ge=1, le=3600, description="A session counts towards session depth (strata_session_depth, "
        "/metrics/session-depth) while a turn is in flight and this long after its last turn ended."
    )
    limits: HttpLimitsConfig = Field(HttpLimitsConfig(), description="Request size, time and concurrency bounds.")
    openapi: bool = Field(
        False, description="Serve the API description at /openapi.json (to callers with an API key or the "
                           "internal token); no interactive docs page is served."
    )


class ApiKeyRef(ConfigModel):
    """Where a tenant's API keys are read from. The value holds one key per line (several during a
    rotation: old and new both valid), each either the key itself or its salted hash
    `hmac-sha256$<salt hex>$<HMAC-SHA256(salt, key) hex>`; a tenant may also be listed more than once."""

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


class TracingConfig(ConfigModel):
    """OpenTelemetry tracing (needs the `otel` extra); off by default."""

    enabled: bool = Field(False, description="Export a span per request (gateway, cache, upstream, memory).")
    endpoint: str | None = Field(
        None, description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces; "
                          "default: the OTEL_EXPORTER_OTLP_* environment variables.")
    service_name: str = Field("strata-runtime", min_length=1, description="The spans' service.name.")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of new traces recorded (parent-based).")


# The names embeddings/local.py's registry serves (a unit test keeps the two lists equal).
LOCAL_EMBEDDING_MODELS = (
    "multilingual-e5-small", "intfloat/multilingual-e5-small",
    "bge-small-en-v1.5", "BAAI/bge-small-en-v1.5",
    "bge-small-en-v1.5+multilingual-e5-small",
    "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
)


class EmbedderConfig(ConfigModel):
    """The embedding model used by the semantic cache, the semantic router and long-term memory."""

    provider: Literal["local", "openai"] = Field(
        "local", description="local: the bundled model in-process; openai: an OpenAI-compatible embeddings API."
    )
    model: str = Field(
        "bge-small-en-v1.5+multilingual-e5-small",
        description="Embedding model name. Local models: bge-small-en-v1.5+multilingual-e5-small (768 "
        "dimensions: English texts to bge, every other text to e5, so an English and a non-English text never "
        "match in the cache), multilingual-e5-small (Chinese, English and ~90 more languages in one model), "
        "bge-small-en-v1.5 (English only) or all-MiniLM-L6-v2 (English only).",
    )
    base_url: str | None = Field(None, description="Embeddings API base URL (provider openai).")
    api_key_env: str | None = Field(None, description="Environment variable holding the embeddings API key.")
    timeout_seconds: float = Field(2.0, gt=0, le=60, description="Deadline per embedding call.")
    dimensions: int | None = Field(
        None, ge=1, description="Vector size requested from the API; unset: learnt from the first answer."
    )

    @model_validator(mode="after")
    def _provider_can_serve_the_model(self) -> EmbedderConfig:
        if self.provider == "local" and self.model not in LOCAL_EMBEDDING_MODELS:
            raise ValueError(f"the local provider ships {', '.join(LOCAL_EMBEDDING_MODELS)}, not {self.model!r}")
        if self.provider == "openai" and not self.base_url:
            raise ValueError("provider openai needs baseUrl")
        return self


class LlmParsingConfig(ConfigModel):
    """The optional LLM pass of the config guard: asks a model to flag risks in an agent's prompts."""

    enabled: bool = Field(False, description="Run the LLM pass on every new agent definition (cached by hash).")
    model: str | None = Field(None, max_length=MAX_MODEL_NAME,
                              description="Logical model from `models` that reviews the definitions.")
    timeout_seconds: float = Field(20.0, gt=0, le=300, description="Deadline of one review call.")


class AgentManagerConfig(ConfigModel):
    """Parsed agent definitions: cache shared by content hash, idle eviction, hot reload, guard."""

    agent_idle_seconds: float = Field(300.0, gt=0, le=86400 * 7,
                                      description="An agent unused for this long is evicted from memory.")
    agent_cleanup_interval_seconds: float = Field(60.0, gt=0, le=3600,
                                                  description="How often idle agents are looked for.")
    parsed_ttl_seconds: int = Field(
        86400, ge=60, le=86400 * 30,
        description="Lifetime of a parsed definition persisted in Redis (renewed when a pod loads it).")
    definitions_path: str | None = Field(
        None, description="A file or directory of agent definitions (e.g. a mounted ConfigMap) watched for "
        "changes: each file holds `agents: [...]`; agents are added, changed and removed without a restart.")
    watch_interval_seconds: float = Field(2.0, gt=0, le=600, description="How often definitionsPath is checked.")
    guard: Literal["warn", "enforce"] = Field(
        "warn", description="warn: guard findings are reported; enforce: a definition with an error finding "
        "is rejected (the previous definition keeps serving).")
    max_prompt_chars: int = Field(32000, ge=100, le=10_000_000,
                                  description="Guard limit on a system prompt or skill instructions.")
    llm_parsing: LlmParsingConfig = Field(LlmParsingConfig(), description="Optional LLM review (off by default).")


MAX_MODELS = 100
MAX_AGENTS = 1000
MAX_TOOLS = 1000
MAX_MCP_SERVERS = 100


class AgentRuntimeSpec(ConfigModel):
    """The agent-facing part of the runtime config: models, agents, tools, memory, limits."""

    # The list bounds let the API server check an AgentDeployment's references (CRD CEL rules are costed by
    # the longest lists they may walk); more agents than MAX_AGENTS: split them over runtimes, or use
    # agentManager.definitionsPath, which has no such bound.
    models: list[ModelConfig] = Field([], max_length=MAX_MODELS, description="Logical models (LLM upstreams) "
                                      "agents and clients use; names unique, at most 100.")
    agents: list[AgentConfig] = Field([], max_length=MAX_AGENTS, description="Agents (chatbots), each owned by a "
                                      "tenant; tenant and id unique together, at most 1000.")
    tools: list[ToolConfig] = Field([], max_length=MAX_TOOLS, description="Tools agents may call; ids unique, "
                                    "at most 1000.")
    mcp_servers: list[McpServerConfig] = Field([], max_length=MAX_MCP_SERVERS, description="MCP servers whose "
                                               "tools agents may call; names unique, at most 100.")
    memory: MemoryConfig = Field(MemoryConfig(), description="Session and long-term memory.")
    rate_limits: RateLimitsConfig = Field(RateLimitsConfig(), description="Rate limits per agent and tenant.")
    embedder: EmbedderConfig = Field(EmbedderConfig(), description="Embedding model.")
    usage: UsageConfig = Field(UsageConfig(), description="Usage accounting.")
    agent_manager: AgentManagerConfig = Field(
        AgentManagerConfig(), description="Agent definitions: idle eviction, the parsed-config cache, the config "
        "guard (warn or enforce) and its optional LLM review. Under the operator, definitionsPath is set for you.")


class RuntimeConfig(AgentRuntimeSpec):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    stores: StoresConfig = StoresConfig()
    cache: CachePolicySpec = CachePolicySpec()
    routing: RoutingPolicySpec = RoutingPolicySpec()
    tracing: TracingConfig = TracingConfig()
    python_tools: PythonToolsConfig = PythonToolsConfig()

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
        mcp_names = {s.name for s in self.mcp_servers}  # `server.tool`: discovered at run time
        for agent in self.agents:
            if agent.model not in known_models:
                raise ValueError(f"agents[{agent.id}].model names unknown model {agent.model!r}")
            for tool in [*agent.tools, *(t for s in agent.skills for t in s.tools)]:
                if tool not in known_tools and tool.split(".", 1)[0] not in mcp_names:
                    raise ValueError(f"agents[{agent.id}] uses unknown tool {tool!r}")
        if self.routing.classifier.model and self.routing.classifier.model not in known_models:
            raise ValueError(f"routing.classifier.model names unknown model {self.routing.classifier.model!r}")
        llm_model = self.agent_manager.llm_parsing.model
        if llm_model and llm_model not in known_models:
            raise ValueError(f"agentManager.llmParsing.model names unknown model {llm_model!r}")
        if self.auth.mode == "apiKey" and not self.auth.api_keys:
            raise ValueError("auth.mode is apiKey but auth.apiKeys is empty (use mode: none for local dev)")
        return self


def _no_duplicates(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{field}: duplicate name {name!r}")
        seen.add(name)
