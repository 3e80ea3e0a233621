"""The tool ledger: what one turn's agent loop decided and what its tool calls returned, in L2.

One Redis hash per turn, `<prefix>:sess:{tenant:session}:tools:<seq>` (the session's hash tag,
so it lives in the session's Cluster slot), with the checkpoint TTL:

    step:<k>       the model's answer at step k (an assistant message, JSON)
    call:<call id> the outcome of one tool call ({ok, result, error}, JSON)
    status         how the loop ended when it was not a plain answer (e.g. `max_tool_steps`), so a
                   client resuming after the `status` event still gets it in `done`

Both are written with HSETNX (+ EXPIRE, + HGET of the winner, one script: one round trip) before
anything depends on them: a step before its calls start, an
outcome before the next model call. The first writer wins; a second producer of the same turn
(a paused pod that came back) reads the winner's value and continues with it, so every pod
replays the same decisions and results. Without Redis (memory backend) the ledger is in process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from strata_runtime.memory.l2 import session_base
from strata_runtime.stores.health import StoreUnavailable
from strata_runtime.stores.redis import RedisConnector, is_redis_failure
from strata_runtime.tools.contract import ToolOutcome

# HSETNX + EXPIRE + the stored value, in one round trip (one key: one Cluster slot).
_PUT_ONCE = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('HGET', KEYS[1], ARGV[1])
"""


@dataclass
class TurnRecord:
    steps: dict[int, dict[str, Any]] = field(default_factory=dict)
    outcomes: dict[str, ToolOutcome] = field(default_factory=dict)
    status: str | None = None


class ToolLedger:
    def __init__(self, redis: RedisConnector, ttl_seconds: int):
        self.redis = redis
        self.ttl = ttl_seconds
        self._memory: dict[str, dict[str, bytes]] = {}

    def _key(self, tenant: str, session_id: str, seq: int) -> str:
        return f"{session_base(self.redis.prefix, tenant, session_id)}:tools:{seq}"

    async def load(self, tenant: str, session_id: str, seq: int) -> TurnRecord:
        key = self._key(tenant, session_id, seq)
        raw: dict[Any, Any]
        if not self.redis.holds_sessions:
            raw = dict(self._memory.get(key, {}))
        else:
            try:
                raw = await self.redis.session_client().hgetall(key)
            except Exception as e:
                if not is_redis_failure(e):
                    raise
                raise self._unavailable(e) from e
        record = TurnRecord()
        for name, value in raw.items():
            field_name = name.decode() if isinstance(name, bytes) else str(name)
            kind, _, ident = field_name.partition(":")
            if kind == "step":
                record.steps[int(ident)] = orjson.loads(value)
            elif kind == "call":
                record.outcomes[ident] = ToolOutcome.from_dict(orjson.loads(value))
            elif kind == "status":
                record.status = value.decode() if isinstance(value, bytes) else str(value)
        return record

    async def _put_once(self, key: str, name: str, value: bytes) -> bytes:
        """Write `name` unless present; the stored value either way."""
        if not self.redis.holds_sessions:
            if len(self._memory) > 100_000:
                self._memory.clear()
            return self._memory.setdefault(key, {}).setdefault(name, value)
        client = self.redis.session_client()
        try:
            stored = await client.eval(_PUT_ONCE, 1, key, name, value, self.ttl)
        except Exception as e:
            if not is_redis_failure(e):
                raise
            raise self._unavailable(e) from e
        if stored is None:
            return value
        return stored.encode() if isinstance(stored, str) else bytes(stored)

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        self.redis.report_failure(error)
        return StoreUnavailable(
            "session store (Redis) unreachable; retry shortly",
            retry_after_seconds=self.redis.config.recover_interval_seconds,
        )

    async def record_step(
        self, tenant: str, session_id: str, seq: int, step: int, message: dict[str, Any]
    ) -> dict[str, Any]:
        stored = await self._put_once(self._key(tenant, session_id, seq), f"step:{step}", orjson.dumps(message))
        result: dict[str, Any] = orjson.loads(stored)
        return result

    async def record_outcome(
        self, tenant: str, session_id: str, seq: int, call_id: str, outcome: ToolOutcome
    ) -> ToolOutcome:
        stored = await self._put_once(
            self._key(tenant, session_id, seq), f"call:{call_id}", orjson.dumps(outcome.as_dict())
        )
        return ToolOutcome.from_dict(orjson.loads(stored))

    async def record_status(self, tenant: str, session_id: str, seq: int, status: str) -> str:
        stored = await self._put_once(self._key(tenant, session_id, seq), "status", status.encode())
        return stored.decode()
