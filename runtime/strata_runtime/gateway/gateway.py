"""The LLM gateway: limits, cache, upstream call, usage and metrics around every chat call.

    complete/stream(body, ctx)
      validate -> resolve logical model -> reserve rate-limit budget
      -> cache.complete/stream(body, ctx, compute)   (compute = upstream chain; no cache: compute)
      -> reconcile the reservation with the real usage, record usage (write-behind),
         metrics and one JSON log line per call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from strata_runtime import tracing
from strata_runtime.cache.contract import ResponseCache
from strata_runtime.cache.keys import pop_controls
from strata_runtime.config import RuntimeConfig
from strata_runtime.embeddings.bounded import EmbeddingQueue, unavailable_error
from strata_runtime.embeddings.contract import Embedder, EmbeddingUnavailable
from strata_runtime.errors import (
    BadRequest,
    Draining,
    NotFound,
    PayloadTooLarge,
    StrataError,
    UpstreamError,
)
from strata_runtime.gateway.contract import CacheResult, CallContext, ChatResult, ChatStream
from strata_runtime.gateway.tokens import (
    estimate_embedding_tokens,
    estimate_prompt_tokens,
    estimate_request_tokens,
    estimated_usage,
)
from strata_runtime.gateway.upstreams import ModelRoute, UpstreamCaller, build_routes, map_provider_error
from strata_runtime.gateway.validation import validate_chat_body, validate_embeddings_body
from strata_runtime.metrics import Metrics, PoolSnapshot
from strata_runtime.providers import ProviderError
from strata_runtime.providers.openai_compat import drop_null_usage, rename_model
from strata_runtime.ratelimit import RateLimiter, Reservation
from strata_runtime.stores.redis import RedisConnector
from strata_runtime.usage import UsageEvent, UsageRecorder, token_count
from strata_runtime.usage.history import UsageHistory

log = logging.getLogger("strata.gateway")

_HITS = ("hit_exact", "hit_semantic")
# What a failed call's log line says about its cause (from the mapped error's details).
_CAUSE_FIELDS = ("upstream_status", "upstream_code", "upstream_type", "phase", "reason")


def _cause(error: BaseException | None) -> dict[str, Any]:
    """A failure's cause for the log line: our code plus the upstream status/code/phase it came from."""
    if error is None:
        return {}
    details = error.details if isinstance(error, StrataError) else {}
    return {"error": getattr(error, "code", type(error).__name__),
            **{k: details[k] for k in _CAUSE_FIELDS if k in details}}


def _span_attributes(call: _Call) -> dict[str, Any]:
    return {"strata.model": call.route.name, "strata.tenant": call.ctx.tenant, "strata.agent_id": call.ctx.agent_id,
            "strata.stream": call.stream}


async def _labelled(chunks: AsyncIterator[dict[str, Any]], name: str) -> AsyncIterator[dict[str, Any]]:
    """The upstream's chunks with the logical name of the model that produced them, for the cache to store."""
    try:
        async for chunk in chunks:
            rename_model(chunk, name)  # keeps a relayable `raw` in step
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class _Call:
    """One gateway call's bookkeeping, from admission to the usage record."""

    route: ModelRoute  # the model asked for
    ctx: CallContext
    reservation: Reservation
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    used: ModelRoute | None = None  # the model that answered (a fallback, or None on a cache hit)
    cache: CacheResult = "disabled"

    @property
    def provider(self) -> str:
        return self.used.provider.name if self.used is not None else "cache"

    @property
    def served(self) -> ModelRoute:
        return self.used or self.route


class Gateway:
    def __init__(self, config: RuntimeConfig, env: Mapping[str, str], redis: RedisConnector, metrics: Metrics,
                 *, cache: ResponseCache | None = None, embedder: Embedder | None = None,
                 is_closing: Callable[[], bool] = lambda: False, usage_history: UsageHistory | None = None):
        self.config = config
        self.metrics = metrics
        self.routes: dict[str, ModelRoute] = build_routes(list(config.models), env)
        self.upstreams = UpstreamCaller(self.routes, metrics)
        self.limiter = RateLimiter(config.rate_limits, redis,
                                   on_limited=lambda scope: metrics.rate_limited.labels(scope).inc())
        self.usage = UsageRecorder(redis, config.usage.ttl_days, history=usage_history,
                                   rollup_interval_seconds=config.usage.rollup_interval_seconds,
                                   history_retention_days=config.usage.history_retention_days)
        self.cache = cache
        self.embedder = embedder
        self.embedding_queue = EmbeddingQueue(embedder, config.server.limits.embeddings) if embedder else None
        self.is_closing = is_closing
        self._agents = {(a.tenant, a.id): a for a in config.agents}
        metrics.watch_pools(self.pool_snapshots)

    def pool_snapshots(self) -> list[PoolSnapshot]:
        """Each upstream connection pool's queue (models served locally, like demo, have none)."""
        out = []
        for name, route in self.routes.items():
            pool = getattr(route.provider, "pool", None)
            if pool is None:
                continue
            s = pool.stats
            out.append(PoolSnapshot(name, pool.max_connections, s.in_use, s.waiting, s.queued_total,
                                    s.queue_timeouts_total, s.wait_seconds_total))
        return out

    # lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.usage.start()

    async def close(self) -> None:
        await self.usage.close()
        for route in self.routes.values():
            await route.provider.close()

    # lookups ----------------------------------------------------------------------------------
    def resolve(self, model: Any) -> ModelRoute:
        route = self.routes.get(model) if isinstance(model, str) else None
        if route is None:
            raise NotFound(f"model {model!r} is not configured on this gateway", field="model")
        return route

    def caching_disabled(self, tenant: str, agent_id: str | None) -> bool:
        agent = self._agents.get((tenant, agent_id)) if agent_id else None
        return bool(agent and agent.caching_disabled)

    def has_agent(self, tenant: str, agent_id: str | None) -> bool:
        return agent_id is not None and (tenant, agent_id) in self._agents

    def model_list(self) -> list[dict[str, Any]]:
        models = [{"id": r.name, "object": "model", "created": 0, "owned_by": r.provider.name}
                  for r in self.routes.values()]
        if self.embedder is not None and self.config.embedder.model not in self.routes:
            models.append({"id": self.config.embedder.model, "object": "model", "created": 0,
                           "owned_by": f"embedder:{self.config.embedder.provider}"})
        return models

    def _admit(self) -> None:
        # A draining runtime still answers what reaches it over kept-alive connections (it tells the
        # client to reconnect elsewhere); only once it is closing does it refuse new model calls.
        if self.is_closing():
            raise Draining("this runtime is shutting down; retry on another replica")

    # chat -------------------------------------------------------------------------------------
    async def _begin(self, body: dict[str, Any], ctx: CallContext, *, stream: bool) -> _Call:
        """Admission, validation, routing and the rate-limit reservation every call starts with."""
        self._admit()
        validate_chat_body(body)
        if self.cache is None:
            pop_controls(body)  # validated, and never sent upstream, even with no cache configured
        route = self.resolve(body["model"])
        reservation = await self.limiter.acquire(ctx.tenant, ctx.budget_agent, estimate_request_tokens(body))
        return _Call(route, ctx, reservation, stream=stream)

    async def complete(self, body: dict[str, Any], ctx: CallContext) -> ChatResult:
        call = await self._begin(body, ctx, stream=False)
        route = call.route

        async def compute() -> dict[str, Any]:
            response, call.used = await self.upstreams.call(route, "chat", body)
            if isinstance(response, dict):
                response["model"] = call.used.name  # stored under the logical name (priced by it)
            return response  # type: ignore[no-any-return]

        self.metrics.llm_in_flight.inc()
        try:
            with tracing.span("gateway.chat", **_span_attributes(call)):
                if self.cache is not None:
                    with tracing.span("cache"):
                        response, call.cache = await self.cache.complete(body, ctx, compute)
                else:
                    response = await compute()
        except BaseException as e:
            await self._failed(call, e)
            raise
        finally:
            self.metrics.llm_in_flight.dec()
        if not isinstance(response, dict):
            raise UpstreamError("upstream returned a malformed completion")
        response["model"] = call.served.name
        await self._finished(call, _usage_or_estimate(response, body))
        return ChatResult(response=response, provider=call.provider, model_resolved=call.served.name,
                          cache=call.cache)

    async def stream(self, body: dict[str, Any], ctx: CallContext) -> ChatStream:
        call = await self._begin(body, ctx, stream=True)
        route = call.route

        async def compute() -> AsyncIterator[dict[str, Any]]:
            chunks: AsyncIterator[dict[str, Any]]
            chunks, call.used = await self.upstreams.call(route, "stream", body)
            if self.cache is None or not self.cache.may_store(ctx):
                return chunks  # `_observe` names the model: one generator less per chunk
            return _labelled(chunks, call.used.name)  # stored under the model that answered

        self.metrics.llm_in_flight.inc()
        try:
            with tracing.span("gateway.chat", **_span_attributes(call)):
                if self.cache is not None:
                    with tracing.span("cache"):
                        chunks, call.cache = await self.cache.stream(body, ctx, compute)
                else:
                    chunks = await compute()
        except BaseException as e:
            self.metrics.llm_in_flight.dec()
            await self._failed(call, e)
            raise
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        observed = self._observe(chunks, call, include_usage, estimate_prompt_tokens(body))
        return ChatStream(chunks=observed, provider=call.provider, model_resolved=call.served.name,
                          cache=call.cache)

    async def _observe(self, chunks: AsyncIterator[dict[str, Any]], call: _Call, include_usage: bool,
                       prompt_estimate: int) -> AsyncIterator[dict[str, Any]]:
        """Pass chunks through; time the first one, keep the usage chunk, account at the end."""
        usage: dict[str, Any] | None = None
        first = True
        completed = False
        error: BaseException | None = None
        chars = 0
        name = call.served.name
        span = tracing.start_span("gateway.stream", **_span_attributes(call))
        replayed = call.cache in _HITS  # chunks from the cache: serialised from the dict, never `raw`
        try:
            async for chunk in chunks:
                if replayed and getattr(chunk, "raw", None) is not None:
                    chunk.raw = None  # type: ignore[attr-defined]
                rename_model(chunk, name)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                choices = chunk.get("choices")
                if not choices:
                    if include_usage:
                        yield chunk
                    continue
                if first:
                    first = False
                    self.metrics.llm_ttft.labels(name, call.provider).observe(time.perf_counter() - call.started)
                if not include_usage and "usage" in chunk:
                    _hide_usage(chunk)
                chars += len((choices[0].get("delta") or {}).get("content") or "")
                yield chunk
            completed = True
        except ProviderError as e:
            error = map_provider_error(e, call.served)
            raise error from None
        except BaseException as e:
            error = e
            raise
        finally:
            await _close_quietly(chunks)
            self.metrics.llm_in_flight.dec()
            tracing.end_span(span, error, **{"strata.completed": completed})
            if usage is None and (completed or chars):
                # No usage chunk (an upstream without include_usage support): estimate, and say so.
                usage = estimated_usage(prompt_estimate, chars)
            if usage is not None:
                await self._finished(call, usage, outcome="ok" if completed else "aborted", error=error)
            else:
                await self._failed(call, error or GeneratorExit())

    # embeddings -------------------------------------------------------------------------------
    async def embeddings(self, body: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        self._admit()
        inputs = validate_embeddings_body(body)
        model = body["model"]
        route = self.routes.get(model)
        local = route is None and self.embedder is not None and model == self.config.embedder.model
        if route is None and not local:
            raise NotFound(f"embedding model {model!r} is not configured on this gateway", field="model")
        tokens = estimate_embedding_tokens(inputs)
        cap = self.config.server.limits.embeddings.max_tokens_per_request
        if tokens > cap:
            raise PayloadTooLarge(f"the inputs come to about {tokens} tokens, more than {cap} per request; "
                                  "send them in several requests", field="input",
                                  details={"estimated_tokens": tokens, "limit_tokens": cap})
        reservation = await self.limiter.acquire(ctx.tenant, ctx.budget_agent, tokens)
        started = time.perf_counter()
        try:
            if route is not None:
                response, used = await self.upstreams.call(route, "embeddings", body)
                provider = used.provider.name
            else:
                response, used, provider = await self._local_embeddings(model, inputs, body), None, "local"
        except BaseException:
            await reservation.settle(0)
            self.usage.record(UsageEvent(tenant=ctx.tenant, agent=ctx.agent_id, model=model, error=True,
                                         latency_ms=(time.perf_counter() - started) * 1000))
            self.metrics.llm_requests.labels(model, route.provider.name if route else "local", "disabled",
                                             "error").inc()
            raise
        usage = response.get("usage")
        prompt = token_count(usage.get("prompt_tokens")) if isinstance(usage, dict) else 0
        cost = used.cost(prompt, 0) if used is not None else 0.0
        await reservation.settle(prompt)
        latency = time.perf_counter() - started
        self.usage.record(UsageEvent(tenant=ctx.tenant, agent=ctx.agent_id, model=model, prompt_tokens=prompt,
                                     cost=cost, latency_ms=latency * 1000))
        self.metrics.llm_requests.labels(model, provider, "disabled", "ok").inc()
        self.metrics.llm_tokens.labels(model, "in").inc(prompt)
        if cost:
            self.metrics.llm_cost.labels(model).inc(cost)
        self.metrics.llm_latency.labels(model, provider, "false").observe(latency)
        response["model"] = model
        return response  # type: ignore[no-any-return]

    async def _local_embeddings(self, model: str, inputs: list[str], body: dict[str, Any]) -> dict[str, Any]:
        assert self.embedder is not None and self.embedding_queue is not None
        if body.get("dimensions") not in (None, self.embedder.dimension):
            raise BadRequest(f"model {model!r} has {self.embedder.dimension} dimensions", field="dimensions")
        try:
            vectors = await self.embedding_queue.embed(inputs)
        except EmbeddingUnavailable as e:
            raise unavailable_error(e) from None
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, vector in enumerate(vectors):
            if as_base64:
                import base64

                embedding: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode()
            else:
                embedding = vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens = sum(len(t.split()) for t in inputs)  # approximate: the local model is free
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    # accounting -------------------------------------------------------------------------------
    async def _finished(self, call: _Call, usage: Any, *, outcome: str = "ok",
                        error: BaseException | None = None) -> None:
        """Account a call that used tokens; `error` is why a stream that used some stopped early."""
        usage = usage if isinstance(usage, dict) else {}
        prompt = token_count(usage.get("prompt_tokens"))
        completion = token_count(usage.get("completion_tokens"))
        latency = time.perf_counter() - call.started
        ctx, route, served, provider = call.ctx, call.route, call.served, call.provider
        if call.cache in _HITS:
            await call.reservation.settle(0)
            event = UsageEvent(tenant=ctx.tenant, agent=ctx.agent_id, model=route.name, latency_ms=latency * 1000,
                               cache_hit=True, saved_prompt_tokens=prompt, saved_completion_tokens=completion,
                               saved_cost=route.cost(prompt, completion))
        else:
            await call.reservation.settle(prompt + completion)
            cost = served.cost(prompt, completion)
            event = UsageEvent(tenant=ctx.tenant, agent=ctx.agent_id, model=served.name, prompt_tokens=prompt,
                               completion_tokens=completion, cost=cost, latency_ms=latency * 1000)
            m = self.metrics
            m.llm_tokens.labels(served.name, "in").inc(prompt)
            m.llm_tokens.labels(served.name, "out").inc(completion)
            if cost:
                m.llm_cost.labels(served.name).inc(cost)
        self.usage.record(event)
        self.metrics.llm_requests.labels(event.model, provider, call.cache, outcome).inc()
        self.metrics.llm_latency.labels(event.model, provider, "true" if call.stream else "false").observe(latency)
        level = logging.INFO if error is None else logging.WARNING
        if log.isEnabledFor(level):
            log.log(level, "llm call", extra={
                "request_id": ctx.request_id, "tenant": ctx.tenant, "agent_id": ctx.agent_id,
                "model": route.name, "model_resolved": served.name, "provider": provider, "stream": call.stream,
                "latency_ms": round(latency * 1000, 2), "usage": {"prompt": prompt, "completion": completion},
                "cache": call.cache, "outcome": outcome, "usage_estimated": bool(usage.get("estimated")),
                **_cause(error)})

    async def _failed(self, call: _Call, error: BaseException) -> None:
        await call.reservation.settle(0)
        latency = time.perf_counter() - call.started
        route, ctx = call.route, call.ctx
        self.usage.record(UsageEvent(tenant=ctx.tenant, agent=ctx.agent_id, model=route.name, error=True,
                                     latency_ms=latency * 1000))
        self.metrics.llm_requests.labels(route.name, route.provider.name, call.cache, "error").inc()
        log.warning("llm call failed", extra={
            "request_id": ctx.request_id, "tenant": ctx.tenant, "agent_id": ctx.agent_id, "model": route.name,
            "provider": route.provider.name, "stream": call.stream, "latency_ms": round(latency * 1000, 2),
            **_cause(error)})


def _usage_or_estimate(response: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A buffered answer's usage block, or an estimate marked so when it has none (or garbage in its
    place), as a stream without a usage chunk is estimated: an upstream that omits usage is not free."""
    usage = response.get("usage")
    if isinstance(usage, dict) and type(usage.get("prompt_tokens")) is int \
            and type(usage.get("completion_tokens")) is int:
        return usage
    chars = 0
    for choice in response.get("choices") or ():
        content = (choice.get("message") or {}).get("content") if isinstance(choice, dict) else None
        chars += len(content) if isinstance(content, str) else 0
    return estimated_usage(estimate_prompt_tokens(body), chars)


def _hide_usage(chunk: dict[str, Any]) -> None:
    """Remove a content chunk's usage for a client that did not ask for it (the bytes re-serialised
    only when the usage was real: a null usage is dropped from the raw bytes in place)."""
    if chunk["usage"] is None:
        drop_null_usage(chunk)
        return
    del chunk["usage"]
    if getattr(chunk, "raw", None) is not None:
        chunk.raw = None  # type: ignore[attr-defined]


async def _close_quietly(chunks: AsyncIterator[dict[str, Any]]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.debug("closing an upstream stream failed", exc_info=True)
