"""Bounds on what one HTTP request may cost before the runtime does any work for it."""

from __future__ import annotations

from pydantic import Field, field_validator

from strata_runtime.config.base import ConfigModel

KIB = 1024
MIB = 1024 * KIB

# Path prefix -> largest request body; the longest matching prefix wins. Chat bodies may carry
# images, the agent endpoints carry one message, everything else is small or has no body.
DEFAULT_BODY_LIMITS = {
    "/": 64 * KIB,
    "/v1/": 8 * MIB,
    "/internal/llm/": 8 * MIB,
    "/api/v1/query": 256 * KIB,
    "/internal/agent-memory/": 1 * MIB,
    "/internal/cache/": 16 * KIB,
}


class TenantConcurrency(ConfigModel):
    """In-flight work one tenant may have in one runtime pod; more is refused with 429 at once."""

    requests: int | None = Field(
        128, ge=1, description="Requests of one tenant in flight at once (streams included); unset: no limit."
    )
    streams: int | None = Field(
        64, ge=1, description="Open response streams of one tenant; keep it below the upstream pool size "
                              "(models[].maxConnections) so one tenant cannot hold every connection."
    )


class EmbeddingsLimits(ConfigModel):
    """Bounds on `/v1/embeddings`: what one request may ask for and how much waits for the embedder."""

    max_tokens_per_request: int = Field(
        300_000, ge=1, description="Estimated input tokens of one request, all inputs together (413 beyond)."
    )
    batch_inputs: int = Field(
        16, ge=1, le=256, description="Inputs embedded together; a larger request is cut into batches of this "
                                      "size, and other requests take turns between its batches."
    )
    concurrent_batches: int = Field(
        2, ge=1, le=64, description="Batches of `/v1/embeddings` requests handed to the embedder at once."
    )
    max_queued_inputs: int = Field(
        8192, ge=1, description="Inputs of all `/v1/embeddings` requests waiting or running in this pod; "
                                "a request that would exceed it is refused with 503 at once."
    )
    deadline_seconds: float = Field(
        30.0, gt=0, le=600, description="Time one request may take, waiting included (503 after)."
    )


class HttpLimitsConfig(ConfigModel):
    """Limits enforced while a request is read: before it is parsed and before auth is checked."""

    head_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Time a client has to send the request line and headers (408 after)."
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="Longest wait for the next piece of a request body (408 after)."
    )
    max_head_bytes: int = Field(
        32 * KIB, ge=KIB, le=MIB, description="Request line plus headers, in bytes (431 beyond)."
    )
    max_headers: int = Field(100, ge=8, le=1000, description="Number of request headers (431 beyond).")
    max_json_depth: int = Field(
        64, ge=2, le=254, description="Nesting of arrays and objects in a JSON body (400 beyond)."
    )
    body_bytes: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_BODY_LIMITS),
        description="Largest request body per path prefix, in bytes; the longest matching prefix wins "
                    "(413 beyond). Give \"/\" for every other path.",
    )
    per_tenant: TenantConcurrency = Field(TenantConcurrency(), description="Concurrency per tenant.")
    embeddings: EmbeddingsLimits = Field(EmbeddingsLimits(), description="Bounds on embeddings requests.")

    @field_validator("body_bytes")
    @classmethod
    def _prefixes_are_paths(cls, value: dict[str, int]) -> dict[str, int]:
        for prefix, size in value.items():
            if not prefix.startswith("/"):
                raise ValueError(f"bodyBytes: {prefix!r} is not a path prefix (starts with '/')")
            if size < 0:
                raise ValueError(f"bodyBytes[{prefix!r}] must be >= 0")
        if "/" not in value:
            raise ValueError("bodyBytes needs a \"/\" entry: the limit for every other path")
        return value
