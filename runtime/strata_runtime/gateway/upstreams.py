"""Calling an upstream for a logical model: retries, circuit breaker, fallback chain.

    call(route, op, body)
      deadline = now + route's timeoutSeconds (one for the whole call)
      for each model in [route, *route.fallbacks] whose circuit allows a call, while time is left:
        up to 1 + maxRetries attempts, full-jitter backoff (or a bounded Retry-After)
        between retryable failures (429, 5xx, timeouts, connection errors; a Retry-After over
        the bound ends the attempts on that model: the next fallback is asked), each attempt
        bounded by the deadline; a non-retryable answer (other 4xx) ends the whole call at once.
      all failed -> the last failure, mapped to a 502/503/504 (or 429) StrataError.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from strata_runtime import tracing
from strata_runtime.config import ModelConfig
from strata_runtime.errors import (
    BadRequest,
    CircuitOpen,
    RateLimited,
    StrataError,
    UpstreamBusy,
    UpstreamError,
    UpstreamIncomplete,
    UpstreamTimeout,
    UpstreamTooLarge,
)
from strata_runtime.gateway.resilience import MAX_RETRY_AFTER, CircuitBreaker, backoff_delay
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
        """Run `op` on the first model of the chain that succeeds; returns its result and route.

        One deadline for the whole call: the asked-for model's `timeoutSeconds`, shared by every
        attempt, backoff and fallback (a fallback never restarts the clock).
        """
        deadline = time.monotonic() + route.config.timeout_seconds
        last: ProviderError | StrataError | None = None
        chain = self.chain(route)
        for candidate in chain:
            if time.monotonic() >= deadline and last is not None:
                break
            if not candidate.breaker.allow():
                last = CircuitOpen(f"upstream for model {candidate.name!r} is failing; circuit open",
                                   details={"model": candidate.name,
                                            "retry_in_seconds": round(candidate.breaker.retry_in(), 1)})
                continue
            try:
                with tracing.span("upstream", **{"strata.model": candidate.name,
                                                 "strata.provider": candidate.provider.name, "strata.op": op}):
                    result = await self._attempts(candidate, op, upstream_body(body, candidate, op), deadline)
                return result, candidate
            except ProviderError as e:
                if not e.retryable:
                    raise map_provider_error(e, candidate) from None
                last = e
                if len(chain) > 1:
                    log.warning("upstream failed; trying the next fallback",
                                extra={"model": candidate.name, "provider": candidate.provider.name,
                                       "status": e.label, **e.cause()})
        if isinstance(last, ProviderError):
            raise map_provider_error(last, route) from None
        assert last is not None
        raise last

    async def _attempts(self, route: ModelRoute, op: Op, body: dict[str, Any], deadline: float) -> Any:
        provider = route.provider
        fn: Callable[..., Awaitable[Any]] = (
            provider.chat if op == "chat" else provider.chat_stream if op == "stream" else provider.embeddings)
        attempts = route.config.max_retries + 1
        for attempt in range(attempts):
            try:
                result = await fn(body, deadline=deadline)
            except ProviderError as e:
                self.metrics.llm_upstream_errors.labels(provider.name, e.label).inc()
                if not e.retryable or e.reason == "pool_exhausted":
                    # A full connection pool is our queue, not a failing upstream: no breaker
                    # failure, no retry on the same pool (it would queue again); a fallback may serve.
                    route.breaker.release_probe()
                    raise
                route.breaker.record_failure()
                delay = backoff_delay(attempt, e.retry_after)
                # A Retry-After longer than we ever wait says the same upstream would refuse again now.
                told_to_wait = e.retry_after is not None and e.retry_after > MAX_RETRY_AFTER
                if attempt + 1 >= attempts or route.breaker.state != "closed" or told_to_wait \
                        or time.monotonic() + delay >= deadline:
                    raise
                log.info("upstream attempt failed; retrying", extra={
                    "model": route.name, "provider": provider.name, "attempt": attempt + 1, **e.cause()})
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
    """The caller's error for a failed upstream call: status class, stable code, the upstream's safe words.

    The upstream's allow-listed `code`/`type`/`param` replace ours where the upstream's verdict is
    the caller's business (a rejected request, a rate limit, an error inside the stream); its
    scrubbed message is appended to ours. An upstream 401/403 is our key's problem, not the
    caller's, so it stays a 502 with the upstream code only in `details`.
    """
    details: dict[str, Any] = {"model": route.name, "provider": route.provider.name, **e.cause()}
    details.pop("timeout", None)
    up = e.upstream
    said = f": {up.message}" if up.message else ""
    fidelity: dict[str, Any] = {"code": up.code, "type": up.type, "param": up.param}
    name = route.name
    if e.reason == "pool_exhausted":
        return UpstreamBusy(f"every upstream connection for model {name!r} is busy; retry later",
                            retry_after_seconds=e.retry_after or 1.0, details=details)
    if e.timeout:
        return UpstreamTimeout(f"upstream for model {name!r} timed out", details=details)
    if e.reason == "incomplete_stream":
        return UpstreamIncomplete(f"upstream for model {name!r} ended its answer before finishing it "
                                  "(no [DONE], no finish_reason); the answer is incomplete", details=details)
    if e.reason in ("response_too_large", "event_too_large"):
        return UpstreamTooLarge(f"upstream for model {name!r} sent an answer over the size limit", details=details)
    if e.status == 429:
        return RateLimited(f"upstream for model {name!r} is rate limiting; retry later{said}",
                           retry_after_seconds=e.retry_after or 1.0, details=details, **fidelity)
    if e.status in (400, 404, 413, 422):
        return BadRequest(f"upstream rejected the request for model {name!r} (HTTP {e.status}){said}",
                          details=details, **fidelity)
    if e.reason == "stream_error":
        return UpstreamError(f"upstream for model {name!r} reported an error mid-stream{said}",
                             details=details, **fidelity)
    if e.reason == "invalid_response":
        return UpstreamError(f"upstream for model {name!r} sent a malformed answer (not an OpenAI chat "
                             "completion)", details=details)
    if e.status is None:
        return UpstreamError(f"upstream for model {name!r} is unreachable", details=details)
    return UpstreamError(f"upstream for model {name!r} failed (HTTP {e.status}){said}", details=details)
