"""Session depth: how many sessions this deployment is serving now, the load signal autoscaling reads.

A session counts while one of its turns is in flight, and for `window` seconds after its last turn
ended (a user reading an answer and typing the next message still holds the session). Counted once
across pods: every pod writes the sessions it touches into one Redis sorted set
(`<keyPrefix>:session-depth`, member `tenant/session`, score = last activity), and the depth is the
number of members active within the window. A session served by three pods within a minute is one
session, not three. Without Redis (single-pod development) the count is this process's own.

Writes are batched: a turn start or end only marks the session and wakes a background writer, so a
turn never waits on this bookkeeping, and a thousand turn starts in a burst cost one ZADD. Turns in
flight are re-marked every quarter window, so a turn longer than the window stays counted; the
entries of a pod that died age out after one window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from strata_runtime.stores.redis import RedisConnector
from strata_runtime.tasks import cancel_and_wait, wait_for_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DepthReading:
    """One reading: `sessions` deployment-wide (or this pod's when `scope` is "pod")."""

    sessions: int
    turns_in_flight: int  # on this pod
    pod_sessions: int  # sessions this pod served within the window
    window_seconds: float
    scope: str  # "deployment" (counted in Redis) | "pod" (no Redis configured)


class SessionDepth:
    def __init__(self, redis: RedisConnector, window_seconds: float,
                 clock: Callable[[], float] = time.time):
        self.redis = redis
        self.window = window_seconds
        self._clock = clock
        self._in_flight: Counter[str] = Counter()  # member -> turns producing on this pod
        self._seen: dict[str, float] = {}  # member -> last activity on this pod
        self._dirty: set[str] = set()  # members to write at the next flush
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last: DepthReading | None = None  # the last successful reading (None: unknown)

    @staticmethod
    def member(tenant: str, session_id: str) -> str:
        return f"{tenant}/{session_id}"

    @property
    def key(self) -> str:
        return self.redis.key("session-depth")

    # bookkeeping (synchronous, never blocks a turn) ------------------------------------------
    def turn_started(self, tenant: str, session_id: str) -> None:
        member = self.member(tenant, session_id)
        self._in_flight[member] += 1
        self._touch(member)

    def turn_ended(self, tenant: str, session_id: str) -> None:
        member = self.member(tenant, session_id)
        self._in_flight[member] -= 1
        if self._in_flight[member] <= 0:
            del self._in_flight[member]
        self._touch(member)

    def _touch(self, member: str) -> None:
        self._seen[member] = self._clock()
        self._dirty.add(member)
        self._wake.set()

    def _pod_sessions(self, now: float) -> int:
        horizon = now - self.window
        for member in [m for m, at in self._seen.items() if at < horizon and m not in self._in_flight]:
            del self._seen[member]
        return len(self._seen)

    # Redis -----------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Write marked sessions and the ones in flight (score now), drop entries older than the window."""
        client = self.redis.client
        if client is None:
            return
        now = self._clock()
        members = {m: self._seen.get(m, now) for m in self._dirty}
        members.update({m: now for m in self._in_flight})
        self._dirty.clear()
        try:
            if members:
                await client.zadd(self.key, members, gt=True)
            await client.zremrangebyscore(self.key, "-inf", f"({now - self.window}")
        except Exception:
            self._dirty.update(members)  # written at the next flush
            raise

    async def read(self) -> DepthReading:
        """The depth now; raises when Redis is configured but cannot be read (the value is unknown)."""
        now = self._clock()
        in_flight, pod = self.local(now)
        if not self.redis.enabled:
            reading = DepthReading(pod, in_flight, pod, self.window, "pod")
        else:
            self.last = None
            client = self.redis.session_client()  # StoreUnavailable while Redis is out
            await self.flush()
            total = int(await client.zcount(self.key, now - self.window, "+inf"))
            reading = DepthReading(total, in_flight, pod, self.window, "deployment")
        self.last = reading
        return reading

    def local(self, now: float | None = None) -> tuple[int, int]:
        """(turns in flight, sessions served within the window) on this pod."""
        return sum(self._in_flight.values()), self._pod_sessions(self._clock() if now is None else now)

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._writer(), name="session-depth-writer")

    async def _writer(self) -> None:
        interval = max(0.5, self.window / 4)
        while True:
            await wait_for_event(self._wake, interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception as e:
                log.warning("could not record session depth in Redis: %s", type(e).__name__)
            await asyncio.sleep(0.2)  # batch a burst of turn starts into one write

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
