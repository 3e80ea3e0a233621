"""Config models shared by the runtime and the operator. Depends only on pydantic/yaml/orjson."""

from strata_runtime.config.agents import (
    AgentConfig,
    AgentLimits,
    LongTermMemoryConfig,
    McpServerConfig,
    MemoryConfig,
    SkillConfig,
    ToolConfig,
)
from strata_runtime.config.base import ConfigModel, SecretKeyRef
from strata_runtime.config.llm import (
    ModelConfig,
    Pricing,
    RateLimit,
    RateLimitsConfig,
    UpstreamResponseLimits,
    UsageConfig,
)
from strata_runtime.config.loading import (
    ConfigError,
    agent_definition,
    agent_definition_hash,
    agents_hash,
    canonical_json,
    config_hash,
    load_config,
    parse_config,
)
from strata_runtime.config.policies import CachePolicySpec, RoutingPolicySpec, RoutingRule
from strata_runtime.config.runtime import (
    AgentManagerConfig,
    AgentRuntimeSpec,
    ApiKeyRef,
    AuthConfig,
    EmbedderConfig,
    RuntimeConfig,
    ServerConfig,
)
from strata_runtime.config.stores import RedisStoreConfig, SqlStoreConfig, StoresConfig, VectorStoreConfig

__all__ = [
    "AgentConfig",
    "AgentLimits",
    "AgentManagerConfig",
    "AgentRuntimeSpec",
    "ApiKeyRef",
    "AuthConfig",
    "CachePolicySpec",
    "ConfigError",
    "ConfigModel",
    "EmbedderConfig",
    "LongTermMemoryConfig",
    "McpServerConfig",
    "MemoryConfig",
    "ModelConfig",
    "Pricing",
    "RateLimit",
    "RateLimitsConfig",
    "RedisStoreConfig",
    "RoutingPolicySpec",
    "RoutingRule",
    "RuntimeConfig",
    "SecretKeyRef",
    "ServerConfig",
    "SkillConfig",
    "SqlStoreConfig",
    "StoresConfig",
    "ToolConfig",
    "UpstreamResponseLimits",
    "UsageConfig",
    "VectorStoreConfig",
    "agent_definition",
    "agent_definition_hash",
    "agents_hash",
    "canonical_json",
    "config_hash",
    "load_config",
    "parse_config",
]
