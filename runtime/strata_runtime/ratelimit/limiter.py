"""Token-bucket rate limits per tenant and per agent: requests and tokens per minute.

Each limit is a bucket holding up to its per-minute budget that refills continuously
(budget / 60 per second). One check takes every bucket that applies (tenant rpm/tpm,
agent rpm/tpm) in ONE Lua script, so the check-and-take is atomic across pods: either all
buckets have enough and all are charged, or none is. The keys share the hash tag
`{tenant}`, so the multi-key script runs on Redis Cluster. The clock is Redis' `TIME`, so
pods with skewed clocks agree.

Tokens are reserved before the upstream call from an estimate (prompt + max_tokens) and
reconciled after with the real usage: unused tokens go back, extra tokens are charged
(a bucket may go negative, which delays the next requests). A request that needs more than a
whole budget could never pass: it is a 400, not a 429 to retry. While Redis is degraded the
same algorithm runs in process memory (per pod, so the budget is per pod then).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.exceptions import NoScriptError

from strata_runtime.config import RateLimitsConfig
from strata_runtime.errors import BadRequest, RateLimited
from strata_runtime.stores.redis import RedisConnector, is_redis_failure

log = logging.getLogger("strata.ratelimit")

_BUCKET_TTL_SECONDS = 180

ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local levels = {}
local wait = 0
local widx = 0
for i = 1, #KEYS do
  local cap = tonumber(ARGV[2 * i - 1])
  local cost = tonumber(ARGV[2 * i])
  local s = redis.call('HMGET', KEYS[i], 'l', 't')
  local level = tonumber(s[1])
  local ts = tonumber(s[2])
  if level == nil or ts == nil then level = cap; ts = now end
  local rate = cap / 60.0
  level = math.min(cap, level + math.max(0, now - ts) * rate)
  levels[i] = level
  if cost > level then
    local w = (cost - level) / rate
    if w > wait then wait = w; widx = i end
  end
end
if wait > 0 then return {0, tostring(wait), widx} end
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 'l', tostring(levels[i] - tonumber(ARGV[2 * i])), 't', tostring(now))
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[#ARGV]))
end
return {1, '0'}
"""

RECONCILE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, #KEYS do
  local cap = tonumber(ARGV[2 * i - 1])
  local delta = tonumber(ARGV[2 * i])
  local s = redis.call('HMGET', KEYS[i], 'l', 't')
  local level = tonumber(s[1])
  local ts = tonumber(s[2])
  if level == nil or ts == nil then level = cap; ts = now end
  level = math.min(cap, level + math.max(0, now - ts) * cap / 60.0)
  level = math.min(cap, level + delta)
  redis.call('HSET', KEYS[i], 'l', tostring(level), 't', tostring(now))
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[#ARGV]))
end
return 1
"""


@dataclass
class _Bucket:
    key: str
    capacity: int
    cost: int
    scope: str  # "tenant" | "agent", for the error message and metrics


@dataclass
class Reservation:
    """Tokens taken before a call; `settle` gives back or charges the difference once."""

    limiter: RateLimiter | None
    token_buckets: list[_Bucket] = field(default_factory=list)
    reserved_tokens: int = 0
    in_redis: bool = False
    settled: bool = False

    async def settle(self, actual_tokens: int) -> None:
        if self.settled or self.limiter is None or not self.token_buckets:
            self.settled = True
            return
        self.settled = True
        await self.limiter._reconcile(self, self.reserved_tokens - actual_tokens)


class _MemoryBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._state: dict[str, tuple[float, float]] = {}

    def _level(self, key: str, capacity: int, now: float) -> float:
        level, ts = self._state.get(key, (float(capacity), now))
        return min(float(capacity), level + max(0.0, now - ts) * capacity / 60.0)

    def acquire(self, buckets: list[_Bucket]) -> tuple[float, int]:
        now = self._clock()
        levels = [self._level(b.key, b.capacity, now) for b in buckets]
        wait, worst = max(((b.cost - lvl) / (b.capacity / 60.0), i)
                          for i, (b, lvl) in enumerate(zip(buckets, levels, strict=True)))
        if wait > 0:
            return wait, worst
        for b, lvl in zip(buckets, levels, strict=True):
            self._state[b.key] = (lvl - b.cost, now)
        if len(self._state) > 100_000:  # idle buckets are full again after a minute: forget them
            self._state = {k: v for k, v in self._state.items() if now - v[1] < 120}
        return 0.0, 0

    def reconcile(self, buckets: list[_Bucket], delta: int) -> None:
        now = self._clock()
        for b in buckets:
            self._state[b.key] = (min(float(b.capacity), self._level(b.key, b.capacity, now) + delta), now)


class RateLimiter:
    def __init__(self, config: RateLimitsConfig, redis: RedisConnector, *,
                 on_limited: Callable[[str], None] | None = None):
        self.config = config
        self.redis = redis
        self.memory = _MemoryBuckets()
        self._on_limited = on_limited
        self._sha: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        a, t = self.config.per_agent, self.config.per_tenant
        return any(x is not None for x in (a.rpm, a.tpm, t.rpm, t.tpm))

    def _buckets(self, tenant: str, agent: str | None, tokens: int) -> tuple[list[_Bucket], list[_Bucket]]:
        tag = "{" + tenant + "}"
        requests: list[_Bucket] = []
        token_buckets: list[_Bucket] = []
        t, a = self.config.per_tenant, self.config.per_agent
        if t.rpm:
            requests.append(_Bucket(self.redis.key("rl", tag, "t", "rpm"), t.rpm, 1, "tenant"))
        if t.tpm:
            token_buckets.append(_Bucket(self.redis.key("rl", tag, "t", "tpm"), t.tpm, tokens, "tenant"))
        if agent is not None:
            if a.rpm:
                requests.append(_Bucket(self.redis.key("rl", tag, "a", agent, "rpm"), a.rpm, 1, "agent"))
            if a.tpm:
                token_buckets.append(_Bucket(self.redis.key("rl", tag, "a", agent, "tpm"), a.tpm, tokens, "agent"))
        return requests, token_buckets

    async def acquire(self, tenant: str, agent: str | None, tokens: int) -> Reservation:
        """Take one request and `tokens` tokens from every applicable bucket, or raise RateLimited."""
        if not self.enabled:
            return Reservation(None)
        requests, token_buckets = self._buckets(tenant, agent, tokens)
        for b in token_buckets:
            if b.cost > b.capacity:  # can never pass however long the client waits: not a 429
                raise BadRequest(
                    f"request needs about {b.cost} tokens, more than the {b.scope} budget of "
                    f"{b.capacity} tokens per minute; lower max_tokens or shorten the prompt",
                    field="max_tokens", details={"scope": b.scope, "limit": "tpm", "budget": b.capacity})
        buckets = requests + token_buckets
        if not buckets:
            return Reservation(None)
        wait, worst, in_redis = await self._acquire(buckets)
        if wait > 0:
            bucket = buckets[worst]  # the limit with the longest wait is the one to report
            limit = "rpm" if bucket.key.endswith(":rpm") else "tpm"
            self._limited(bucket.scope)
            raise RateLimited(f"{bucket.scope} rate limit exceeded ({limit}); retry later",
                              retry_after_seconds=wait, details={"scope": bucket.scope, "limit": limit})
        return Reservation(self, token_buckets, tokens, in_redis)

    def _limited(self, scope: str) -> None:
        if self._on_limited is not None:
            self._on_limited(scope)

    async def _acquire(self, buckets: list[_Bucket]) -> tuple[float, int, bool]:
        client = self.redis.client
        if client is not None:
            args: list[int] = []
            for b in buckets:
                args += [b.capacity, b.cost]
            args.append(_BUCKET_TTL_SECONDS)
            try:
                result = await self._eval("acquire", ACQUIRE_LUA, [b.key for b in buckets], args)
                if int(result[0]) == 0:
                    return float(result[1]), int(result[2]) - 1, True
                return 0.0, 0, True
            except Exception as e:
                if not is_redis_failure(e):
                    raise
                log.warning("rate limiter: Redis failed, using in-memory buckets", extra={"error": str(e)})
                self.redis.report_failure(e)
        wait, worst = self.memory.acquire(buckets)
        return wait, worst, False

    async def _reconcile(self, reservation: Reservation, delta: int) -> None:
        if delta == 0:
            return
        buckets = reservation.token_buckets
        client = self.redis.client
        if reservation.in_redis and client is not None:
            args: list[int] = []
            for b in buckets:
                args += [b.capacity, delta]
            args.append(_BUCKET_TTL_SECONDS)
            try:
                await self._eval("reconcile", RECONCILE_LUA, [b.key for b in buckets], args)
                return
            except Exception as e:
                if not is_redis_failure(e):
                    raise
                self.redis.report_failure(e)
        self.memory.reconcile(buckets, delta)

    async def _eval(self, name: str, script: str, keys: list[str], args: list[int]) -> list[bytes]:
        client = self.redis.client
        assert client is not None
        sha = self._sha.get(name)
        if sha is not None:
            try:
                result: list[bytes] = await client.evalsha(sha, len(keys), *keys, *args)
                return result
            except NoScriptError:
                pass
        result = await client.eval(script, len(keys), *keys, *args)
        if sha is None:
            self._sha[name] = hashlib.sha1(script.encode()).hexdigest()
        return result
