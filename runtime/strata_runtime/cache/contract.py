"""How the gateway uses the response cache, so either can change without the other.

The cache decides hit, miss or bypass, coalesces identical concurrent misses (the
`compute` callable runs at most once per key at a time) and stores what it computed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from strata_runtime.gateway.contract import CacheResult, CallContext

Compute = Callable[[], Awaitable[dict[str, Any]]]
ComputeStream = Callable[[], Awaitable[AsyncIterator[dict[str, Any]]]]


class ResponseCache(Protocol):
    async def complete(
        self, body: dict[str, Any], ctx: CallContext, compute: Compute
    ) -> tuple[dict[str, Any], CacheResult]:
        """Return a cached `chat.completion` or the computed one (stored when cacheable)."""
        ...

    async def stream(
        self, body: dict[str, Any], ctx: CallContext, compute: ComputeStream
    ) -> tuple[AsyncIterator[dict[str, Any]], CacheResult]:
        """Replay cached chunks or pass the computed stream through, recording it for storage."""
        ...

    def may_store(self, ctx: CallContext) -> bool:
        """False when nothing this call computes can be stored (the cache is off, or off for the caller)."""
        ...

    async def start(self) -> None: ...
    async def close(self) -> None: ...
