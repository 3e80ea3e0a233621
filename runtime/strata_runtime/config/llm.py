"""LLM upstreams (logical model names), rate limits and usage accounting settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from strata_runtime.config.base import ConfigModel

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

Provider = Literal["openai", "deepseek", "ollama", "vllm", "anthropic", "demo"]

# Bounds that let the API server check references between models and agents (CRD CEL rules are
# costed by the longest lists and strings they may walk); generous for any one runtime.
MAX_MODEL_NAME = 128
MAX_FALLBACKS = 10
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME)]


class Pricing(ConfigModel):
    """Prices used to report the cost of calls and of the tokens the cache saved."""

    input_per_1m: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    output_per_1m: float = Field(0.0, ge=0, description="USD per million completion tokens.")


class UpstreamResponseLimits(ConfigModel):
    """Caps on what this upstream may send back, in bytes; an answer over one is refused (502
    upstream_response_too_large, not retried) and its connection closed, never read whole."""

    body_bytes: int = Field(
        128 * MIB, ge=KIB, le=4 * GIB,
        description="A buffered answer (chat without stream, embeddings: large embedding batches are the big ones).",
    )
    stream_bytes: int = Field(256 * MIB, ge=KIB, le=16 * GIB, description="A whole streamed answer.")
    event_bytes: int = Field(
        4 * MIB, ge=KIB, le=GIB,
        description="One SSE event of a stream: a larger one is an upstream that never ends its events "
        "(a stream is also bounded by streamBytes, whichever is reached first).",
    )
    error_body_bytes: int = Field(
        64 * KIB, ge=KIB, le=16 * MIB,
        description="What is read of a non-200 answer's body (only its error object is used).",
    )



class ModelConfig(ConfigModel):
    """A logical model: one upstream LLM endpoint with its timeouts, retries and fallbacks."""

    name: str = Field(min_length=1, max_length=MAX_MODEL_NAME,
                      description="Logical name that agents and clients use (at most 128 characters).")
    provider: Provider = Field(description="Upstream API dialect; demo answers locally without any upstream.")
    upstream_model: str | None = Field(None, description="Model name sent upstream; defaults to name.")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    api_key_file: str | None = Field(None, description="File (e.g. a mounted Secret) holding the API key.")
    fallbacks: list[ModelName] = Field([], max_length=MAX_FALLBACKS,
                                      description="Logical models tried in order when this one fails (at most 10).")
    timeout_seconds: float = Field(60.0, gt=0, le=3600, description="Whole-request deadline.")
    connect_timeout_seconds: float = Field(5.0, gt=0, le=120, description="Deadline to open a connection upstream.")
    max_retries: int = Field(2, ge=0, le=10, description="Retries on 429/5xx/timeouts, jittered backoff.")
    read_timeout_seconds: float | None = Field(
        None, gt=0, le=3600, description="Longest silence between two upstream bytes; default timeoutSeconds."
    )
    max_connections: int = Field(
        4096, ge=1, le=65536,
        description="Most connections open to this upstream at once. An open stream holds one for its whole "
        "answer, so size it for the concurrent streams one pod serves; a request that finds all busy queues "
        "(strata_upstream_pool_waiting_requests).",
    )
    queue_timeout_seconds: float = Field(
        5.0, gt=0, le=3600,
        description="Longest wait for a free upstream connection when all maxConnections are busy; then the "
        "request fails with 503 upstream_busy and Retry-After.",
    )
    queue_log_seconds: float = Field(
        1.0, ge=0, le=3600, description="A wait for a free upstream connection longer than this is logged."
    )
    circuit_failure_threshold: int = Field(
        5, ge=1, le=1000, description="Consecutive retryable failures that open the circuit breaker."
    )
    circuit_open_seconds: float = Field(
        30.0, gt=0, le=3600, description="How long an open circuit rejects calls before one probe is let through."
    )
    response_limits: UpstreamResponseLimits = Field(
        UpstreamResponseLimits(), description="Caps on the size of this upstream's answers.")
    pricing: Pricing = Field(Pricing(), description="Token prices for cost accounting.")


class RateLimit(ConfigModel):
    """Limits per minute; unset: unlimited."""

    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt + completion) per minute.")


class RateLimitsConfig(ConfigModel):
    """Request and token rate limits, shared by all pods through Redis."""

    per_agent: RateLimit = Field(RateLimit(), description="Limits for each agent.")
    per_tenant: RateLimit = Field(RateLimit(), description="Limits for each tenant (all its agents together).")


class UsageConfig(ConfigModel):
    """Usage accounting (tokens and cost per tenant, agent, model and day)."""

    ttl_days: int = Field(90, ge=1, le=3650, description="Lifetime of the per-day usage hashes in Redis (older days "
                          "are answered from the usage history in the SQL store).")
    rollup_interval_seconds: float = Field(
        60.0, ge=1, le=86400, description="How often the day totals are copied into the relational store's "
        "usage history (table strata_usage_daily), which answers for days Redis no longer holds and keeps "
        "in-process usage across restarts; a final copy is made at shutdown. Up to this long of usage is lost "
        "when a pod without Redis is killed."
    )
    history_retention_days: int = Field(
        400, ge=1, le=36500, description="Days of usage history kept in strata_usage_daily: the roll-up deletes "
        "older rows of this runtime's scope, at most once a day per process. Days older than both this and "
        "ttlDays read as zero."
    )
