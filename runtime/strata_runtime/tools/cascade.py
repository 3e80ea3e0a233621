"""The cascade guard: bounds on agents and tools calling each other, counted across pods.

Three bounds from `agent.limits`, each violation a `CascadeLimit` (429 `cascade_limit`), a
`strata_cascade_violations{limit}` count and one log line:

* `maxDepth` — the depth a request carries in `X-Strata-Depth` (0 for a public request; a tool
  called at depth d gets d+1 and passes it on when it calls back into `/internal/*`);
* `maxInteractionsPerSession` — turns of one session that were admitted (a conditional `INCR` of a
  per-session counter: a refused turn does not count, so the counter is the number of turns that
  ran, and raising the limit later admits exactly the difference);
* `maxFanOut` — tool calls of one chain: a turn, plus whatever its tools start with the same
  `X-Strata-Chain` id (`INCR` of a per-chain counter).

Counters are Redis `INCRBY` with a TTL set on first increment (one Lua script), in keys hash-tagged by session or
chain so each lives in one Cluster slot; they are atomic across pods. Without Redis (memory
backend) they are counted in process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from strata_runtime.config.agents import AgentLimits
from strata_runtime.errors import CascadeLimit
from strata_runtime.metrics import Metrics
from strata_runtime.stores.health import StoreUnavailable
from strata_runtime.stores.redis import RedisConnector, is_redis_failure

log = logging.getLogger("strata.tools")

DEPTH_HEADER = "x-strata-depth"
CHAIN_HEADER = "x-strata-chain"
CHAIN_TTL_SECONDS = 3600


# INCRBY, and a TTL from the first increment on: one round trip, one key (one Cluster slot).
_INCR_WITH_TTL = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if value == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return value
"""

# INCR unless the counter is already at ARGV[1] (then -1, nothing written); TTL from the first one.
_INCR_BELOW = """
local value = tonumber(redis.call('GET', KEYS[1]) or '0')
if value >= tonumber(ARGV[1]) then return -1 end
value = redis.call('INCR', KEYS[1])
if value == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return value
"""


def parse_depth(value: str | None) -> int:
    if value is None or not value.strip():
        return 0
    try:
        depth = int(value)
    except ValueError:
        return 0
    return max(0, depth)


class CascadeGuard:
    def __init__(self, redis: RedisConnector, metrics: Metrics, session_ttl_seconds: Callable[[], int]):
        self.redis = redis
        self.metrics = metrics
        self._session_ttl = session_ttl_seconds
        self._local: dict[str, int] = {}

    def _violation(self, limit: str, message: str, **extra: object) -> CascadeLimit:
        self.metrics.cascade_violations.labels(limit).inc()
        log.warning("cascade limit reached", extra={"limit": limit, **extra})
        return CascadeLimit(message, retry_after_seconds=1, details={"limit": limit})

    def check_depth(self, depth: int, limits: AgentLimits, *, agent_id: str) -> None:
        if depth > limits.max_depth:
            raise self._violation(
                "maxDepth", f"call depth {depth} is above maxDepth {limits.max_depth}", agent_id=agent_id, depth=depth
            )

    async def _eval(self, script: str, key: str, *args: int) -> int:
        client = self.redis.client
        assert client is not None
        try:
            return int(await client.eval(script, 1, key, *args))
        except Exception as e:
            if not is_redis_failure(e):
                raise
            self.redis.report_failure(e)
            raise StoreUnavailable(
                "cascade counters (Redis) unreachable; retry shortly",
                retry_after_seconds=self.redis.config.recover_interval_seconds,
            ) from e

    async def _admit(self, key: str, ttl: int, limit: int) -> bool:
        """One more under `limit`, atomically: False (and no increment) when the counter is at it."""
        if self.redis.client is None:
            if self._local.get(key, 0) >= limit:
                return False
            await self._incr(key, ttl)
            return True
        return await self._eval(_INCR_BELOW, key, limit, ttl) >= 0

    async def _incr(self, key: str, ttl: int, by: int = 1) -> int:
        if self.redis.client is None:
            if len(self._local) > 100_000:  # the memory backend is for one process in development
                self._local.clear()
            self._local[key] = self._local.get(key, 0) + by
            return self._local[key]
        return await self._eval(_INCR_WITH_TTL, key, by, ttl)

    async def count_turn(self, tenant: str, session_id: str, limits: AgentLimits) -> None:
        """One more turn of the session; refused (and not counted) at maxInteractionsPerSession."""
        key = self.redis.key("cascade", "{" + f"{tenant}:{session_id}" + "}", "turns")
        if not await self._admit(key, self._session_ttl(), limits.max_interactions_per_session):
            raise self._violation(
                "maxInteractionsPerSession",
                f"the session reached maxInteractionsPerSession ({limits.max_interactions_per_session})",
                session_id=session_id,
            )

    async def count_calls(self, chain: str, calls: int, limits: AgentLimits) -> None:
        """`calls` more tool calls in the chain; refused past maxFanOut."""
        key = self.redis.key("cascade", "{" + chain + "}", "calls")
        total = await self._incr(key, CHAIN_TTL_SECONDS, calls)
        if total > limits.max_fan_out:
            raise self._violation(
                "maxFanOut", f"the call chain reached maxFanOut ({limits.max_fan_out} tool calls)", chain=chain
            )
