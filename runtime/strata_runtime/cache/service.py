"""`ResponseCache` implementation: exact + semantic lookups, single flight, storage, stats.

Decisions (where the spec is silent):

* Exact caching applies at any temperature (the key holds temperature, seed and every other
  sampling parameter); semantic caching only when temperature <= `semantic.maxTemperature`
  (an absent temperature is the OpenAI default, 1.0) and for single-answer requests (n <= 1).
* `stream` is not part of the key: a streamed and a plain answer are interchangeable (see
  cache/streams.py); streamed answers are stored only when `policy.streaming` is on.
* Per-request controls (`body["cache"]`, folded from `Cache-Control` by the route) can only be
  stricter: no-cache (do not read; still coalesced with nobody), no-store, a shorter ttl.
  The `cache` field is removed from the body in place, before anything goes upstream.
* Concurrent identical misses wait for one computation; callers that joined another's
  computation are reported as `hit_exact` (they caused no upstream call and cost nothing).
  Across pods a `SET NX PX` lock makes the others poll for the stored entry.
* Semantic candidates: the nearest entries above a low recall cosine, each checked by the hit
  guard (a hard veto) and then by the verifier fitted for the embedder (cache/verifier.py) at
  the policy's `semantic.maxWrongHitRate`. An embedder with no fitted verifier falls back to
  one cosine threshold (`semantic.threshold`, else 0.93) plus the guard, and refuses a candidate
  whose content words moved (swapped roles: nothing else would see them).
* An answer produced by a fallback model is stored under the fallback's model (the key of the
  same request sent to that model), never under the model asked for.
* Streams: the upstream's usage chunk is always passed on to the caller of `stream` (the
  gateway records real usage from it and shows it to the client only when asked for).
* The cache never fails a request: a Redis error degrades to the memory store for that call
  (and flags the backend degraded), an embedding error or deadline makes it an exact-only call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from strata_runtime.cache import streams
from strata_runtime.cache.contract import Compute, ComputeStream
from strata_runtime.cache.flight import Flight
from strata_runtime.cache.index import F32, SemanticIndex
from strata_runtime.cache.keys import CacheControls, RequestKeys, namespace, pop_controls, request_keys
from strata_runtime.cache.memory import MemoryStore
from strata_runtime.cache.redis_store import RedisStore
from strata_runtime.cache.verifier import Verifier, check_unverified, fully_read, verifier_for
from strata_runtime.config import CachePolicySpec
from strata_runtime.embeddings.contract import Embedder, EmbeddingUnavailable
from strata_runtime.gateway.contract import CacheResult, CallContext
from strata_runtime.stores.redis import RedisClient, RedisConnector, is_redis_failure
from strata_runtime.usage import token_count

log = logging.getLogger("strata.cache")

JSON = dict[str, Any]
Pricing = Callable[[str], tuple[float, float]]  # model -> (USD per 1M prompt, per 1M completion)
_OFFLOAD_ROWS = 20_000  # partitions larger than this are scored in a worker thread
_FALLBACK_THRESHOLD = 0.93  # cosine threshold for an embedder without a fitted verifier


@dataclass
class CacheStats:
    hits_exact: int = 0
    hits_semantic: int = 0
    hits_coalesced: int = 0
    misses: int = 0
    bypass: int = 0
    disabled: int = 0
    stores: int = 0
    guard_rejections: dict[str, int] = field(default_factory=dict)
    embedding_failures: int = 0
    backend_errors: int = 0
    prompt_tokens_saved: int = 0
    completion_tokens_saved: int = 0
    cost_saved_usd: float = 0.0


@dataclass
class _Plan:
    keys: RequestKeys
    tenant: str | None  # None for the shared scope
    controls: CacheControls
    exact: bool
    semantic: bool
    tenant_label: str
    body: JSON = field(default_factory=dict)  # the request, to re-key an answer from a fallback model
    ns: JSON = field(default_factory=dict)


class CacheService:
    def __init__(self, policy: CachePolicySpec, *, redis: RedisConnector | None = None,
                 embedder: Embedder | None = None, pricing: Pricing | None = None,
                 metrics: Any = None, lock_ttl_seconds: float = 30.0, lock_wait_seconds: float = 30.0):
        self.policy = policy
        self.redis = redis if policy.backend != "memory" else None
        self.embedder = embedder
        self.verifier: Verifier | None = (
            verifier_for(embedder.name, policy.semantic.max_wrong_hit_rate) if embedder is not None else None)
        self.pricing = pricing
        self.metrics = metrics
        self.lock_ttl_ms = int(lock_ttl_seconds * 1000)
        self.lock_wait_seconds = lock_wait_seconds
        self.memory = MemoryStore(max_entries=policy.max_entries, max_bytes=policy.max_bytes)
        prefix = redis.prefix if redis is not None else "strata"
        # Pods on another embedder (a rolling change of model) share the entries, never the vectors.
        self.redis_store = RedisStore(prefix, max_local_vectors=max(policy.max_entries, 100_000),
                                      max_entries=policy.max_entries, max_bytes=policy.max_bytes,
                                      space=getattr(embedder, "vector_space", None))
        self.stats = CacheStats()
        self._flights: dict[str, Flight] = {}
        self._pod = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._pumps: set[asyncio.Task[None]] = set()

    # lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for task in list(self._pumps):
            task.cancel()
        for task in list(self._pumps):
            with contextlib.suppress(BaseException):
                await task

    # the contract ---------------------------------------------------------------------------
    async def complete(self, body: JSON, ctx: CallContext, compute: Compute) -> tuple[JSON, CacheResult]:
        plan, result = self._plan(body, ctx, streaming=False)
        if plan is None:
            return await compute(), self._count(result)
        client = self._client()
        vector: F32 | None = None
        if not plan.controls.no_cache:
            hit, vector, client = await self._lookup(plan, client)
            if hit is not None:
                response, kind = hit
                return response, self._count_hit(kind, response, plan.keys.model)
            flight = self._flights.get(plan.keys.exact)
            if flight is not None:
                completion = await flight.wait_done()
                return completion, self._count_hit("hit_coalesced", completion, plan.keys.model)
        return await self._lead_complete(plan, client, vector, compute)

    async def stream(self, body: JSON, ctx: CallContext,
                     compute: ComputeStream) -> tuple[AsyncIterator[JSON], CacheResult]:
        plan, result = self._plan(body, ctx, streaming=True)
        if plan is None:
            return await compute(), self._count(result)
        client = self._client()
        vector: F32 | None = None
        if not plan.controls.no_cache:
            hit, vector, client = await self._lookup(plan, client, want_chunks=True)
            if hit is not None:
                stored, kind = hit
                chunks = streams.for_replay(stored.get("_chunks") or streams.synthesise(stored["response"]),
                                            stored["response"], include_usage=True)
                return _iterate(chunks), self._count_hit(kind, stored["response"], plan.keys.model)
            flight = self._flights.get(plan.keys.exact)
            if flight is not None:
                self._count_hit("hit_coalesced", None, plan.keys.model)
                return self._follow(flight), "hit_exact"
        flight = Flight(streaming=True)
        if not plan.controls.no_cache:
            self._flights[plan.keys.exact] = flight
        self.stats.misses += 1
        self._observe("miss")
        try:
            upstream = await compute()
        except BaseException as e:
            flight.finish(error=e)
            self._flights.pop(plan.keys.exact, None)
            raise
        task = asyncio.create_task(self._pump(plan, client, vector, flight, upstream), name="cache-stream-pump")
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)
        return self._follow(flight), "miss"

    def may_store(self, ctx: CallContext) -> bool:
        return self.policy.enabled and not ctx.caching_disabled

    # planning -------------------------------------------------------------------------------
    def _plan(self, body: JSON, ctx: CallContext, *, streaming: bool) -> tuple[_Plan | None, CacheResult]:
        controls = pop_controls(body)  # always: the field must never go upstream
        policy = self.policy
        if not policy.enabled or ctx.caching_disabled:
            return None, "disabled"
        if streaming and not policy.streaming:
            return None, "bypass"
        if controls.no_cache and controls.no_store:
            return None, "bypass"
        ns = namespace(ctx, policy.scope)
        if ns is None:
            return None, "bypass"
        keys = request_keys(body, ns)
        temperature = body.get("temperature")
        temperature = 1.0 if temperature is None else temperature
        n = body.get("n")
        semantic = (
            policy.semantic.enabled
            and self.embedder is not None
            and keys.fingerprint is not None
            and bool(keys.query and keys.query.strip())
            and fully_read(keys.query or "")
            and isinstance(temperature, int | float) and temperature <= policy.semantic.max_temperature
            and (n is None or n == 1)
        )
        exact = policy.exact.enabled
        if not (exact or semantic):
            return None, "bypass"
        tenant = None if policy.scope == "shared" else ctx.tenant
        return _Plan(keys, tenant, controls, exact, semantic, ctx.tenant, body=body, ns=ns), "miss"

    def _client(self) -> RedisClient | None:
        return self.redis.client if self.redis is not None else None

    def _backend_failed(self, error: BaseException) -> None:
        self.stats.backend_errors += 1
        if self.redis is not None:
            self.redis.report_failure(error)
        log.warning("cache backend error; using the memory store for this call",
                    extra={"error": type(error).__name__})

    # lookups --------------------------------------------------------------------------------
    async def _lookup(self, plan: _Plan, client: RedisClient | None, want_chunks: bool = False
                      ) -> tuple[tuple[JSON, str] | None, F32 | None, RedisClient | None]:
        """(hit, query vector, client still usable). A hit is (response or stored entry, kind)."""
        if plan.exact:
            raw, client = await self._get(plan, client, plan.keys.exact)
            entry = _decode(raw)
            if entry is not None and entry.get("exact_until", 0) > time.time():
                return (self._shape(entry, want_chunks), "hit_exact"), None, client
        if not plan.semantic:
            return None, None, client
        vector = await self._embed(plan.keys.query or "")
        if vector is None:
            return None, None, client
        try:
            hit = await self._semantic(plan, client, vector)
        except Exception as e:
            if not is_redis_failure(e):
                raise
            self._backend_failed(e)
            client = None
            hit = await self._semantic(plan, None, vector)
        if hit is None:
            return None, vector, client
        return (self._shape(hit, want_chunks), "hit_semantic"), vector, client

    @staticmethod
    def _shape(entry: JSON, want_chunks: bool) -> JSON:
        if want_chunks:
            return {"response": entry["response"], "_chunks": entry.get("chunks")}
        response: JSON = entry["response"]
        return response

    async def _get(self, plan: _Plan, client: RedisClient | None, key: str) -> tuple[bytes | None,
                                                                                     RedisClient | None]:
        if client is not None:
            try:
                return await self.redis_store.get(client, plan.tenant, key), client
            except Exception as e:
                if not is_redis_failure(e):
                    raise
                self._backend_failed(e)
        return self.memory.get(key), None

    async def _embed(self, text: str) -> F32 | None:
        assert self.embedder is not None
        try:
            # asyncio.timeout, not wait_for: wait_for wraps the call in a task of its own (two more
            # event-loop turns on every semantic lookup).
            async with asyncio.timeout(_embed_deadline(self.embedder)):
                vectors = await self.embedder.embed([text])
            vector: F32 = np.asarray(vectors[0], dtype=np.float32)
            return vector
        except (EmbeddingUnavailable, TimeoutError, ValueError) as e:
            self.stats.embedding_failures += 1
            log.warning("embedding failed; semantic cache skipped", extra={"error": type(e).__name__})
            return None

    async def _semantic(self, plan: _Plan, client: RedisClient | None, vector: F32) -> JSON | None:
        fingerprint = plan.keys.fingerprint
        assert fingerprint is not None
        query = plan.keys.query or ""
        floor = self.policy.semantic.threshold
        if self.verifier is not None:
            threshold = max(self.verifier.recall(query), floor or 0.0)
        else:
            threshold = floor if floor is not None else _FALLBACK_THRESHOLD
        if client is not None:
            await self.redis_store.ensure_partition(client, plan.tenant, fingerprint)
            index, queries = self.redis_store.index, self.redis_store.queries
        else:
            index, queries = self.memory.index, self.memory.queries
        candidates = await _search(index, fingerprint, vector, threshold)
        for key, score in candidates:
            cached_query = queries.get(key)
            if cached_query is None:
                continue
            allowed, reason = self._verify(query, cached_query, score)
            if not allowed:
                reason = reason or "other"
                self.stats.guard_rejections[reason] = self.stats.guard_rejections.get(reason, 0) + 1
                if self.metrics is not None:
                    self.metrics.cache_guard_rejections.labels(reason).inc()
                continue
            if client is not None:
                entry = _decode(await self.redis_store.get(client, plan.tenant, key))
                if entry is None:
                    await self.redis_store.forget_member(client, plan.tenant, fingerprint, key)
                    continue
            else:
                entry = _decode(self.memory.get(key))
                if entry is None:
                    self.memory.index.remove(key)
                    continue
            if entry.get("semantic_until", 0) <= time.time():
                continue
            return entry
        return None

    def _verify(self, query: str, cached_query: str, cosine: float) -> tuple[bool, str | None]:
        if self.verifier is not None:
            decision = self.verifier.check(query, cached_query, cosine)
            return decision.allowed, decision.reason
        decision = check_unverified(query, cached_query)
        return decision.allowed, decision.reason

    # computing and storing ------------------------------------------------------------------
    async def _lead_complete(self, plan: _Plan, client: RedisClient | None, vector: F32 | None,
                             compute: Compute) -> tuple[JSON, CacheResult]:
        flight = Flight(streaming=False)
        if not plan.controls.no_cache:
            self._flights[plan.keys.exact] = flight
        token = f"{self._pod}-{uuid.uuid4().hex[:8]}"
        locked = False
        try:
            if client is not None and not plan.controls.no_cache:
                locked, waited = await self._cross_pod_wait(plan, client, token)
                if waited is not None:
                    flight.finish(completion=waited)
                    return waited, self._count_hit("hit_exact", waited, plan.keys.model)
            self.stats.misses += 1
            self._observe("miss")
            try:
                response = await compute()
            except BaseException as e:
                flight.finish(error=e)
                raise
            flight.finish(completion=response)
            if not plan.controls.no_store and _complete_answer(response):
                await self._store(plan, client, vector, response, None)
            return response, "miss"
        finally:
            if self._flights.get(plan.keys.exact) is flight:
                del self._flights[plan.keys.exact]
            if locked and client is not None:
                try:
                    await self.redis_store.unlock(client, plan.tenant, plan.keys.exact, token)
                except Exception as e:
                    if not is_redis_failure(e):
                        raise  # the lock expires by itself when Redis is down

    async def _cross_pod_wait(self, plan: _Plan, client: RedisClient, token: str) -> tuple[bool, JSON | None]:
        """Take the cross-pod lock, or poll for the entry another pod is computing."""
        try:
            if await self.redis_store.try_lock(client, plan.tenant, plan.keys.exact, token, self.lock_ttl_ms):
                # Another pod may have stored the answer between our lookup and the lock: look once more.
                entry = _decode(await self.redis_store.get(client, plan.tenant, plan.keys.exact))
                fresh = entry is not None and entry.get("exact_until", 0) > time.time()
                return True, (entry["response"] if fresh and entry is not None else None)
            deadline = time.monotonic() + self.lock_wait_seconds
            delay = 0.02
            while time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.25)
                entry = _decode(await self.redis_store.get(client, plan.tenant, plan.keys.exact))
                if entry is not None:
                    return False, entry["response"]
                if await self.redis_store.try_lock(client, plan.tenant, plan.keys.exact, token, self.lock_ttl_ms):
                    return True, None  # the other pod gave up (or stored nothing): compute ourselves
        except Exception as e:
            if not is_redis_failure(e):
                raise
            self._backend_failed(e)
        return False, None

    async def _pump(self, plan: _Plan, client: RedisClient | None, vector: F32 | None, flight: Flight,
                    upstream: AsyncIterator[JSON]) -> None:
        try:
            async for chunk in upstream:
                flight.push(chunk)
        except BaseException as e:
            flight.finish(error=e)
            if self._flights.get(plan.keys.exact) is flight:
                del self._flights[plan.keys.exact]
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        finally:
            closer = getattr(upstream, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        completion = streams.assemble(flight.chunks)
        flight.finish(completion=completion)
        if self._flights.get(plan.keys.exact) is flight:
            del self._flights[plan.keys.exact]
        if not plan.controls.no_store and _complete_answer(completion):
            try:
                await self._store(plan, client, vector, completion, flight.chunks)
            except Exception:
                log.exception("storing a streamed answer failed")

    async def _store(self, plan: _Plan, client: RedisClient | None, vector: F32 | None, response: JSON,
                     chunks: list[JSON] | None) -> None:
        answered = response.get("model")
        if isinstance(answered, str) and answered and answered != plan.keys.model:
            # A fallback model answered: file it under the request as sent to that model.
            plan = _Plan(request_keys({**plan.body, "model": answered}, plan.ns), plan.tenant, plan.controls,
                         plan.exact, plan.semantic, plan.tenant_label, body=plan.body, ns=plan.ns)
        now = time.time()
        exact_ttl = self.policy.exact.ttl_seconds if plan.exact else 0
        semantic_ttl = self.policy.semantic.ttl_seconds if plan.semantic else 0
        if plan.controls.ttl_seconds is not None:
            exact_ttl = min(exact_ttl, plan.controls.ttl_seconds)
            semantic_ttl = min(semantic_ttl, plan.controls.ttl_seconds)
        if plan.semantic and vector is None:
            vector = await self._embed(plan.keys.query or "")
        if vector is None:
            semantic_ttl = 0
        ttl = max(exact_ttl, semantic_ttl)
        if ttl <= 0:
            return
        entry = {"v": 1, "model": plan.keys.model, "tenant": plan.tenant_label, "created": now,
                 "exact_until": now + exact_ttl, "semantic_until": now + semantic_ttl,
                 "query": plan.keys.query, "fp": plan.keys.fingerprint, "response": response, "chunks": chunks}
        value = orjson.dumps(entry)
        semantic = None
        if semantic_ttl > 0 and vector is not None and plan.keys.fingerprint is not None:
            semantic = (plan.keys.fingerprint, vector, plan.keys.query or "", float(semantic_ttl))
        if client is not None:
            try:
                await self.redis_store.set(client, plan.tenant, plan.keys.exact, value, ttl, semantic)
                self.stats.stores += 1
                return
            except Exception as e:
                if not is_redis_failure(e):
                    raise
                self._backend_failed(e)
        if self.memory.set(plan.keys.exact, value, ttl, tenant=plan.tenant_label, model=plan.keys.model,
                           query=plan.keys.query or ""):
            self.stats.stores += 1
            if semantic is not None:
                self.memory.index.add(semantic[0], plan.keys.exact, semantic[1])
                self.memory.queries[plan.keys.exact] = semantic[2]

    # following a flight ---------------------------------------------------------------------
    async def _follow(self, flight: Flight) -> AsyncIterator[JSON]:
        """Every chunk, the usage chunk included: the gateway needs it to record real usage."""
        if not flight.streaming:
            completion = await flight.wait_done()
            for chunk in streams.for_replay(streams.synthesise(completion), completion, include_usage=True):
                yield chunk
            return
        async for chunk in flight.follow():
            yield chunk

    # admin ----------------------------------------------------------------------------------
    async def invalidate(self, *, tenant: str | None = None, pattern: str | None = None) -> int:
        if pattern == "*":
            pattern = None
        removed = self.memory.invalidate(tenant=tenant, pattern=pattern)
        client = self._client()
        if client is not None:
            try:
                removed += await self.redis_store.invalidate(client, tenant=tenant, pattern=pattern)
            except Exception as e:
                if not is_redis_failure(e):
                    raise
                self._backend_failed(e)
        return removed

    async def snapshot(self) -> JSON:
        s = self.stats
        hits = s.hits_exact + s.hits_semantic + s.hits_coalesced
        lookups = hits + s.misses
        backend = "redis" if self._client() is not None else "memory"
        entries: int | None = len(self.memory)
        stored_bytes: int | None = self.memory.bytes
        client = self._client()
        if client is not None:
            try:
                entries = await self.redis_store.count(client)
                stored_bytes = None  # not tracked per key in Redis (MEMORY USAGE per key is too costly)
            except Exception as e:
                if not is_redis_failure(e):
                    raise
                self._backend_failed(e)
        return {
            "enabled": self.policy.enabled, "backend": backend, "configured_backend": self.policy.backend,
            "scope": self.policy.scope,
            "hits": {"exact": s.hits_exact, "semantic": s.hits_semantic, "coalesced": s.hits_coalesced},
            "misses": s.misses, "bypass": s.bypass, "disabled": s.disabled,
            "hit_rate": round(hits / lookups, 4) if lookups else 0.0,
            "stores": s.stores, "entries": entries, "bytes": stored_bytes,
            "memory": {"entries": len(self.memory), "bytes": self.memory.bytes, "evictions": self.memory.evictions,
                       "semantic_vectors": len(self.memory.index)},
            "semantic": {"threshold": self.policy.semantic.threshold,
                         "verifier": self.verifier is not None,
                         "max_wrong_hit_rate": self.policy.semantic.max_wrong_hit_rate,
                         "guard_rejections": dict(s.guard_rejections),
                         "embedding_failures": s.embedding_failures,
                         "local_vectors": len(self.memory.index) + len(self.redis_store.index)},
            "saved": {"prompt_tokens": s.prompt_tokens_saved, "completion_tokens": s.completion_tokens_saved,
                      "total_tokens": s.prompt_tokens_saved + s.completion_tokens_saved,
                      "cost_usd": round(s.cost_saved_usd, 6)},
            "backend_errors": s.backend_errors,
            "in_flight": len(self._flights),
        }

    # accounting -----------------------------------------------------------------------------
    def _count(self, result: CacheResult) -> CacheResult:
        if result == "disabled":
            self.stats.disabled += 1
        else:
            self.stats.bypass += 1
        self._observe(result)
        return result

    def _count_hit(self, kind: str, response: JSON | None, model: str) -> CacheResult:
        """Count a hit and what it saved, priced at the logical model asked for (the gateway's too)."""
        if kind == "hit_semantic":
            self.stats.hits_semantic += 1
        elif kind == "hit_coalesced":
            self.stats.hits_coalesced += 1
        else:
            self.stats.hits_exact += 1
        self._observe(kind)
        usage = (response or {}).get("usage")
        usage = usage if isinstance(usage, dict) else {}
        prompt = token_count(usage.get("prompt_tokens"))
        completion = token_count(usage.get("completion_tokens"))
        self.stats.prompt_tokens_saved += prompt
        self.stats.completion_tokens_saved += completion
        cost = 0.0
        if self.pricing is not None and response is not None:
            per_in, per_out = self.pricing(model)
            cost = (prompt * per_in + completion * per_out) / 1e6
            self.stats.cost_saved_usd += cost
        if self.metrics is not None:
            self.metrics.cache_tokens_saved.inc(prompt + completion)
            self.metrics.cache_cost_saved.inc(cost)
        return "hit_semantic" if kind == "hit_semantic" else "hit_exact"

    def _observe(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_requests.labels(result).inc()


def _embed_deadline(embedder: Embedder) -> float:
    return float(getattr(embedder, "timeout_seconds", 2.0)) + 0.05


def _decode(raw: bytes | None) -> JSON | None:
    if raw is None:
        return None
    try:
        entry: JSON = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) and "response" in entry else None


def _complete_answer(response: JSON) -> bool:
    choices = response.get("choices")
    return isinstance(choices, list) and bool(choices) and all(
        isinstance(c, dict) and c.get("finish_reason") for c in choices)


async def _search(index: SemanticIndex, fingerprint: str, vector: F32, threshold: float) -> list[tuple[str, float]]:
    if index.partition_size(fingerprint) <= _OFFLOAD_ROWS:
        return index.search(fingerprint, vector, threshold)
    part = index.partitions[fingerprint]
    n = len(part)
    matrix, ids = part.matrix[:n], list(part.ids)
    scores: F32 = await asyncio.to_thread(np.dot, matrix, vector)
    top = np.argpartition(-scores, 5)[:5]
    found = [(ids[i], float(scores[i])) for i in top[np.argsort(-scores[top])] if scores[i] >= threshold]
    # Rows may have moved while the thread ran: re-score each candidate against its current row.
    verified = []
    for key, _ in found:
        row = part.rows.get(key)
        if row is not None and float(part.matrix[row] @ vector) >= threshold:
            verified.append((key, float(part.matrix[row] @ vector)))
    return verified


async def _iterate(chunks: list[JSON]) -> AsyncIterator[JSON]:
    for chunk in chunks:
        yield chunk
