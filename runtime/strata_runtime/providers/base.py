"""What every provider offers the gateway, and how its failures are classified.

A `ProviderError` says whether trying again (same upstream after a backoff, or the next
fallback) can help: 429, 5xx, timeouts and connection failures can; other 4xx cannot.
Its message never contains the upstream API key or the upstream's full body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from strata_runtime.config import ModelConfig
from strata_runtime.providers.upstream_errors import UpstreamErrorInfo

JSON = dict[str, Any]

_RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


Phase = Literal["connect", "headers", "body", "stream"]


class ProviderError(Exception):
    """One failed upstream call, with what is known of its cause (for the log line and the caller).

    `reason` names a failure that has no HTTP status of its own (`incomplete_stream`,
    `response_too_large`, `event_too_large`, `invalid_response`, `stream_error`); `upstream`
    is the allow-listed, scrubbed part of the upstream's error body.
    """

    def __init__(self, message: str, *, status: int | None = None, timeout: bool = False,
                 retry_after: float | None = None, upstream: UpstreamErrorInfo | None = None,
                 phase: Phase | None = None, reason: str | None = None, final: bool = False):
        super().__init__(message)
        self.message = message
        self.status = status  # upstream HTTP status; None for transport failures
        self.timeout = timeout
        self.retry_after = retry_after
        self.upstream = upstream or UpstreamErrorInfo()
        self.phase = phase
        self.reason = reason
        self.final = final  # trying again cannot help (an oversized answer stays oversized)

    @property
    def upstream_code(self) -> str | None:
        return self.upstream.code

    @property
    def retryable(self) -> bool:
        return not self.final and (self.status is None or self.status in _RETRYABLE_STATUS)

    @property
    def label(self) -> str:
        """Low-cardinality metric label: the status, `timeout`, `connect` or the reason."""
        if self.timeout:
            return "timeout"
        if self.status is not None:
            return str(self.status)
        return self.reason or "connect"

    def cause(self) -> dict[str, Any]:
        """The failure's cause for a log line: status, upstream code/type, phase, reason."""
        fields = {"upstream_status": self.status, "upstream_code": self.upstream.code,
                  "upstream_type": self.upstream.type, "phase": self.phase, "reason": self.reason,
                  "timeout": self.timeout or None}
        return {k: v for k, v in fields.items() if v is not None}


class Provider(Protocol):
    name: str  # openai | deepseek | ollama | vllm | demo
    model: str  # upstream model name

    # `deadline` (time.monotonic) is the caller's overall deadline; the call ends by then.
    async def chat(self, body: JSON, *, deadline: float | None = None) -> JSON: ...
    async def chat_stream(self, body: JSON, *, deadline: float | None = None) -> AsyncIterator[JSON]:
        """Resolves once the upstream accepted the request (status 200): errors before that raise.

        The iterator ends only after the upstream's terminal event (`[DONE]` or a `finish_reason`);
        a stream cut short raises `ProviderError(reason="incomplete_stream")` instead.
        """
        ...

    async def embeddings(self, body: JSON, *, deadline: float | None = None) -> JSON: ...
    async def close(self) -> None: ...


def read_api_key(config: ModelConfig, env: Mapping[str, str]) -> str | None:
    """The model's key from its variable or file, without surrounding whitespace: a Secret written
    with `echo` ends in a newline, which would end the Authorization header line early and keep the
    echoed key from matching the one the answers are scrubbed of."""
    if config.api_key_env:
        return (env.get(config.api_key_env) or "").strip() or None
    if config.api_key_file:
        try:
            return Path(config.api_key_file).read_text(encoding="utf-8").strip() or None
        except OSError:
            return None
    return None


def build_provider(config: ModelConfig, env: Mapping[str, str]) -> Provider:
    if config.provider == "demo":
        from strata_runtime.providers.demo import DemoProvider

        return DemoProvider(config.upstream_model or config.name)
    from strata_runtime.providers.openai_compat import OpenAICompatProvider

    return OpenAICompatProvider(config, read_api_key(config, env), env=env)
