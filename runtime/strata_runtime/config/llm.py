"""LLM upstreams (logical model names), rate limits and usage accounting settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from strata_runtime.config.base import ConfigModel

Provider = Literal["openai", "deepseek", "ollama", "vllm", "anthropic", "demo"]


class Pricing(ConfigModel):
    input_per_1m: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    output_per_1m: float = Field(0.0, ge=0, description="USD per million completion tokens.")


class ModelConfig(ConfigModel):
    name: str = Field(min_length=1, description="Logical name that agents and clients use.")
    provider: Provider
    upstream_model: str | None = Field(None, description="Model name sent upstream; defaults to name.")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    api_key_file: str | None = Field(None, description="File (e.g. a mounted Secret) holding the API key.")
    fallbacks: list[str] = Field([], description="Logical models tried in order when this one fails.")
    timeout_seconds: float = Field(60.0, gt=0, le=3600, description="Whole-request deadline.")
    connect_timeout_seconds: float = Field(5.0, gt=0, le=120)
    max_retries: int = Field(2, ge=0, le=10, description="Retries on 429/5xx/timeouts, jittered backoff.")
    read_timeout_seconds: float | None = Field(
        None, gt=0, le=3600, description="Longest silence between two upstream bytes; default timeoutSeconds."
    )
    max_connections: int = Field(256, ge=1, le=10000, description="Pooled keep-alive connections upstream.")
    circuit_failure_threshold: int = Field(
        5, ge=1, le=1000, description="Consecutive retryable failures that open the circuit breaker."
    )
    circuit_open_seconds: float = Field(
        30.0, gt=0, le=3600, description="How long an open circuit rejects calls before one probe is let through."
    )
    pricing: Pricing = Pricing()


class RateLimit(ConfigModel):
    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt + completion) per minute.")


class RateLimitsConfig(ConfigModel):
    per_agent: RateLimit = RateLimit()
    per_tenant: RateLimit = RateLimit()


class UsageConfig(ConfigModel):
    ttl_days: int = Field(90, ge=1, le=3650, description="Lifetime of the per-day usage hashes in Redis.")
