"""Calling an upstream for a logical model: retries, circuit breaker, fallback chain.

    call(route, op, body)
      for each model in [route, *route.fallbacks] whose circuit allows a call:
        up to 1 + maxRetries attempts, full-jitter backoff (or a bounded Retry-After)
        between retryable failures (429, 5xx, timeouts, connection errors);
        a non-retryable answer (other 4xx) ends the whole call at once.
      all failed -> the last failure, mapped to a 502/503/504 (or 429) StrataError.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from strata_runtime.config import ModelConfig
from strata_runtime.errors import (
    BadRequest,
    CircuitOpen,
    RateLimited,
    StrataError,
    UpstreamError,
    UpstreamTimeout,
)
from strata_runtime.gateway.resilience import CircuitBreaker, backoff_delay
from strata_runtime.metrics import Metrics
from strata_runtime.providers import Provider, ProviderError, build_provider

log = logging.getLogger("strata.gateway")

Op = Literal["chat", "stream", "embeddings"]
T = TypeVar("T")

# Fields that are ours (tenant/agent routing), never the upstream's business.
_PRIVATE_FIELDS = ("tenant_id", "metadata")


@dataclass
class ModelRoute:
    config: ModelConfig
    provider: Provider
    breaker: CircuitBreaker

    @property
    def name(self) -> str:
        return self.config.name

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        p = self.config.pricing
        return (prompt_tokens * p.input_per_1m + completion_tokens * p.output_per_1m) / 1_000_000


def build_routes(models: list[ModelConfig], env: Mapping[str, str]) -> dict[str, ModelRoute]:
    return {
        m.name: ModelRoute(m, build_provider(m, env), CircuitBreaker(m.circuit_failure_threshold,
                                                                      m.circuit_open_seconds))
        for m in models
    }


def upstream_body(body: dict[str, Any], route: ModelRoute, op: Op) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in _PRIVATE_FIELDS}
    out["model"] = route.provider.model
    if op == "stream":
        options = body.get("stream_options")
        # Always ask for the usage chunk: usage is recorded from the upstream's own numbers.
        out["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        out["stream"] = True
    return out


class UpstreamCaller:
    def __init__(self, routes: dict[str, ModelRoute], metrics: Metrics):
        self.routes = routes
        self.metrics = metrics

    def chain(self, route: ModelRoute) -> list[ModelRoute]:
        seen = {route.name}
        chain = [route]
        for name in route.config.fallbacks:
            if name not in seen and name in self.routes:
                seen.add(name)
                chain.append(self.routes[name])
        return chain

    async def call(self, route: ModelRoute, op: Op, body: dict[str, Any]) -> tuple[Any, ModelRoute]:
        """Run `op` on the first model of the chain that succeeds; returns its result and route."""
        last: ProviderError | StrataError | None = None
        for candidate in self.chain(route):
            if not candidate.breaker.allow():
                last = CircuitOpen(f"upstream for model {candidate.name!r} is failing; circuit open",
                                   details={"model": candidate.name,
                                            "retry_in_seconds": round(candidate.breaker.retry_in(), 1)})
                continue
            try:
                result = await self._attempts(candidate, op, upstream_body(body, candidate, op))
                return result, candidate
            except ProviderError as e:
                if not e.retryable:
                    raise map_provider_error(e, candidate) from None
                last = e
                if candidate is not route or len(self.chain(route)) > 1:
                    log.warning("upstream failed; trying the next fallback",
                                extra={"model": candidate.name, "provider": candidate.provider.name,
                                       "status": e.label})
        if isinstance(last, ProviderError):
            raise map_provider_error(last, route) from None
        assert last is not None
        raise last

    async def _attempts(self, route: ModelRoute, op: Op, body: dict[str, Any]) -> Any:
        provider = route.provider
        fn: Callable[[dict[str, Any]], Awaitable[Any]] = (
            provider.chat if op == "chat" else provider.chat_stream if op == "stream" else provider.embeddings)
        attempts = route.config.max_retries + 1
        for attempt in range(attempts):
            try:
                result = await fn(body)
            except ProviderError as e:
                self.metrics.llm_upstream_errors.labels(provider.name, e.label).inc()
                if not e.retryable:
                    route.breaker.release_probe()
                    raise
                route.breaker.record_failure()
                if attempt + 1 >= attempts or route.breaker.state != "closed":
                    raise
                delay = backoff_delay(attempt, e.retry_after)
                self.metrics.pending_requests.inc()
                try:
                    await asyncio.sleep(delay)
                finally:
                    self.metrics.pending_requests.dec()
                continue
            route.breaker.record_success()
            return result
        raise AssertionError("unreachable")


def map_provider_error(e: ProviderError, route: ModelRoute) -> StrataError:
    details: dict[str, Any] = {"model": route.name, "provider": route.provider.name}
    if e.status is not None:
        details["upstream_status"] = e.status
    if e.upstream_code:
        details["upstream_code"] = e.upstream_code
    if e.timeout:
        return UpstreamTimeout(f"upstream for model {route.name!r} timed out", details=details)
    if e.status == 429:
        return RateLimited(f"upstream for model {route.name!r} is rate limiting; retry later",
                           retry_after_seconds=e.retry_after or 1.0, details=details)
    if e.status in (400, 404, 413, 422):
        return BadRequest(f"upstream rejected the request for model {route.name!r} (HTTP {e.status})",
                          details=details)
    if e.status is None:
        return UpstreamError(f"upstream for model {route.name!r} is unreachable", details=details)
    return UpstreamError(f"upstream for model {route.name!r} failed (HTTP {e.status})", details=details)
