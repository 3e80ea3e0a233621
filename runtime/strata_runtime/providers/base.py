"""What every provider offers the gateway, and how its failures are classified.

A `ProviderError` says whether trying again (same upstream after a backoff, or the next
fallback) can help: 429, 5xx, timeouts and connection failures can; other 4xx cannot.
Its message never contains the upstream API key or the upstream's full body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from strata_runtime.config import ModelConfig

JSON = dict[str, Any]

_RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


class ProviderError(Exception):
    def __init__(self, message: str, *, status: int | None = None, timeout: bool = False,
                 retry_after: float | None = None, upstream_code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status  # upstream HTTP status; None for transport failures
        self.timeout = timeout
        self.retry_after = retry_after
        self.upstream_code = upstream_code

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in _RETRYABLE_STATUS

    @property
    def label(self) -> str:
        """Low-cardinality metric label: the status, `timeout` or `connect`."""
        if self.timeout:
            return "timeout"
        return str(self.status) if self.status is not None else "connect"


class Provider(Protocol):
    name: str  # openai | deepseek | ollama | vllm | demo
    model: str  # upstream model name

    async def chat(self, body: JSON) -> JSON: ...
    async def chat_stream(self, body: JSON) -> AsyncIterator[JSON]:
        """Resolves once the upstream accepted the request (status 200): errors before that raise."""
        ...

    async def embeddings(self, body: JSON) -> JSON: ...
    async def close(self) -> None: ...


def read_api_key(config: ModelConfig, env: Mapping[str, str]) -> str | None:
    if config.api_key_env:
        return env.get(config.api_key_env) or None
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

    return OpenAICompatProvider(config, read_api_key(config, env))
