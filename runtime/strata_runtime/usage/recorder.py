"""Usage recording: `{prefix}:usage:{YYYY-MM-DD}` hashes, fields `{tenant}:{agent}:{model}:{metric}`.

Recording never delays a response: `record` only adds to an in-process table of pending
increments; a background task flushes that table every `FLUSH_SECONDS` as ONE pipeline
of HINCRBY / HINCRBYFLOAT (+ EXPIRE per day key), and `close` flushes what is left.
A day is one key, so Redis Cluster needs no hash tag. While Redis is degraded (or when it
is not configured) the increments go to an in-process table, which reads merge with Redis' numbers.

With a usage history (`usage/history.py`), a second task copies the day totals into the relational
store every `usage.rollupIntervalSeconds` and once more at `close`: the shared Redis hashes of the
days this process wrote (and always today's and yesterday's, so a day whose writer died is copied
by another pod) as source `redis`, and the in-process table as this process' own source. A query
takes, per field, the larger of Redis' value and the `redis` row (the hash only grows while it
lives, so the larger one is the newer; the row alone answers once the hash expired), plus the rows
of every other process and this process' in-process table (its own rows are older copies of it).
Once a UTC day a roll-up also deletes the history's rows older than `usage.historyRetentionDays`.

Fields are named `{tenant}:{agent}:{model}:{metric}` (usage/fields.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from strata_runtime.stores.redis import RedisConnector, is_redis_failure
from strata_runtime.tasks import cancel_and_wait
from strata_runtime.usage.fields import FLOAT_METRICS, INT_METRICS, METRICS, split_field
from strata_runtime.usage.history import SHARED_SOURCE, RowKey, UsageHistory, local_source, merge_days, rows_of

log = logging.getLogger("strata.usage")

FLUSH_SECONDS = 1.0
NO_AGENT = "-"
MAX_RANGE_DAYS = 366
FINAL_ROLLUP_SECONDS = 10.0  # the roll-up at close: bounded, so a hung database never holds the shutdown


@dataclass
class UsageEvent:
    tenant: str
    agent: str | None
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_ms: float = 0.0
    cache_hit: bool = False
    saved_prompt_tokens: int = 0
    saved_completion_tokens: int = 0
    saved_cost: float = 0.0
    error: bool = False
    day: str | None = None  # UTC date; now when None


@dataclass(frozen=True)
class UsageQuery:
    start: dt.date
    end: dt.date
    tenant: str | None = None
    agent: str | None = None
    model: str | None = None
    group_by: tuple[str, ...] = ("tenant", "agent", "model")


# More tokens than any one call can use: a count above it is an upstream's garbage, not usage.
MAX_TOKENS_PER_CALL = 100_000_000


def token_count(value: Any) -> int:
    """A usage count from an upstream's `usage` block when it is one (a non-negative integer, bounded);
    anything else (a string, a float, a bool, a negative number, garbage) counts 0, never a 500."""
    if type(value) is int and 0 <= value <= MAX_TOKENS_PER_CALL:
        return value
    return 0


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


class UsageRecorder:
    def __init__(self, redis: RedisConnector, ttl_days: int, *, history: UsageHistory | None = None,
                 rollup_interval_seconds: float = 60.0, history_retention_days: int = 400):
        self.redis = redis
        self.ttl_seconds = ttl_days * 86400
        self.history = history
        self.rollup_interval_seconds = rollup_interval_seconds
        self.history_retention_days = history_retention_days
        self._pruned_on: dt.date | None = None  # the UTC day this process last pruned the history
        self.source = local_source()
        self._pending: dict[tuple[str, str], float] = defaultdict(float)
        self._memory: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._dirty_shared: set[str] = set()  # days written to Redis since the last roll-up
        self._dirty_local: set[str] = set()  # days of the in-process table changed since the last roll-up
        self._copied_shared: dict[str, dict[RowKey, dict[str, float]]] = {}  # the last shared rows copied
        self._task: asyncio.Task[None] | None = None
        self._rollup_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._rollup_lock = asyncio.Lock()

    def record(self, event: UsageEvent) -> None:
        day = event.day or today()
        base = f"{event.tenant}:{event.agent or NO_AGENT}:{event.model}:"
        pending = self._pending
        pending[(day, base + "requests")] += 1
        if event.error:
            pending[(day, base + "errors")] += 1
        if event.prompt_tokens:
            pending[(day, base + "prompt_tokens")] += event.prompt_tokens
        if event.completion_tokens:
            pending[(day, base + "completion_tokens")] += event.completion_tokens
        if event.cost:
            pending[(day, base + "cost")] += event.cost
        pending[(day, base + "latency_ms_sum")] += event.latency_ms
        if event.cache_hit:
            pending[(day, base + "cache_hits")] += 1
            pending[(day, base + "saved_prompt_tokens")] += event.saved_prompt_tokens
            pending[(day, base + "saved_completion_tokens")] += event.saved_completion_tokens
            pending[(day, base + "saved_cost")] += event.saved_cost

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="usage-flush")
        if self.history is not None:
            self._rollup_task = asyncio.create_task(self._rollup_forever(), name="usage-rollup")

    async def close(self) -> None:
        await cancel_and_wait(self._rollup_task)
        self._rollup_task = None
        await cancel_and_wait(self._task)
        self._task = None
        await self.flush()
        if self.history is not None:
            try:
                async with asyncio.timeout(FINAL_ROLLUP_SECONDS):
                    await self.rollup()
            except Exception as e:
                log.warning("usage: the final roll-up into the usage history failed",
                            extra={"error": str(e) or type(e).__name__})

    async def _rollup_forever(self) -> None:
        while True:
            await asyncio.sleep(self.rollup_interval_seconds)
            try:
                await self.rollup()
            except Exception as e:  # the days stay marked: the next pass copies them
                log.warning("usage roll-up failed; retrying next interval", extra={"error": str(e) or type(e).__name__})

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:
                log.exception("usage flush failed")

    async def flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, defaultdict(float)
            client = self.redis.client
            if client is not None:
                try:
                    pipe = client.pipeline(transaction=False)
                    days = set()
                    for (day, fld), value in batch.items():
                        key = self.redis.key("usage", day)
                        days.add(key)
                        if fld.rsplit(":", 1)[1] in FLOAT_METRICS:
                            pipe.hincrbyfloat(key, fld, value)
                        else:
                            pipe.hincrby(key, fld, int(value))
                    for key in days:
                        pipe.expire(key, self.ttl_seconds)
                    await pipe.execute()
                    self._dirty_shared.update(day for day, _ in batch)
                    return
                except Exception as e:
                    if not is_redis_failure(e):
                        raise
                    log.warning("usage: Redis write failed, keeping usage in memory", extra={"error": str(e)})
                    self.redis.report_failure(e)
            for (day, fld), value in batch.items():
                self._memory[day][fld] += value
                self._dirty_local.add(day)

    async def rollup(self) -> int:
        """Copy the day totals into the usage history (see the module docstring); returns the rows written.
        Idempotent: a pass run twice, or by several pods at once, writes the same totals; the days of a
        failed pass are copied by the next one. A shared row equal to what this process last copied
        is not written again (the table holds at least that), so an idle pod writes nothing."""
        if self.history is None:
            return 0
        history = self.history
        await self.flush()
        written = 0
        async with self._rollup_lock:
            local, self._dirty_local = self._dirty_local, set()
            shared, self._dirty_shared = self._dirty_shared, set()
            now = dt.datetime.now(dt.UTC).date()
            try:
                if local:
                    written += await history.write(self.source, {day: rows_of(self._memory[day])
                                                                 for day in sorted(local)})
                local = set()
                await self._prune_history(history, now)  # before the Redis copy, which an outage fails
                client = self.redis.client
                if client is not None:
                    days = sorted(shared | {now.isoformat(), (now - dt.timedelta(days=1)).isoformat()})
                    try:
                        pipe = client.pipeline(transaction=False)
                        for day in days:
                            pipe.hgetall(self.redis.key("usage", day))
                        hashes = await pipe.execute()
                    except Exception as e:
                        if not is_redis_failure(e):
                            raise
                        self.redis.report_failure(e)
                        raise
                    copied = {day: rows_of({k.decode(): float(v) for k, v in fields.items()})
                              for day, fields in zip(days, hashes, strict=True) if fields}
                    written += await history.write(SHARED_SOURCE, {
                        day: {key: metrics for key, metrics in rows.items()
                              if self._copied_shared.get(day, {}).get(key) != metrics}
                        for day, rows in copied.items()})
                    self._copied_shared = copied
                    shared = set()  # (while Redis is unreachable they wait for it)
            finally:
                self._dirty_local |= local
                self._dirty_shared |= shared
        return written

    async def _prune_history(self, history: UsageHistory, now: dt.date) -> None:
        """Drop the history's days past `history_retention_days`, once per UTC day (a failed prune is
        tried again at the next roll-up)."""
        if self._pruned_on != now:
            await history.prune(now - dt.timedelta(days=self.history_retention_days))
            self._pruned_on = now

    async def query(self, q: UsageQuery) -> dict[str, Any]:
        await self.flush()
        days = [(q.start + dt.timedelta(days=i)).isoformat() for i in range((q.end - q.start).days + 1)]
        raw: dict[str, dict[str, float]] = {}
        client = self.redis.client
        if client is not None:
            try:
                pipe = client.pipeline(transaction=False)
                for day in days:
                    pipe.hgetall(self.redis.key("usage", day))
                for day, fields in zip(days, await pipe.execute(), strict=True):
                    raw[day] = {k.decode(): float(v) for k, v in fields.items()}
            except Exception as e:
                if not is_redis_failure(e):
                    raise
                self.redis.report_failure(e)
                raw = {}
        if self.history is not None:
            others: list[tuple[str, dict[str, float]]] = []
            for row in await self.history.read(q.start, q.end, tenant=q.tenant, agent=q.agent, model=q.model):
                if row.source == SHARED_SOURCE:
                    bucket = raw.setdefault(row.day, {})
                    for fld, value in row.fields.items():
                        bucket[fld] = max(bucket.get(fld, 0.0), value)
                elif row.source != self.source:
                    others.append((row.day, row.fields))
            merge_days(raw, others)
        merge_days(raw, ((day, self._memory[day]) for day in days if day in self._memory))
        return _aggregate(raw, q)


def _aggregate(raw: dict[str, dict[str, float]], q: UsageQuery) -> dict[str, Any]:
    groups: dict[tuple[str, ...], dict[str, float]] = {}
    totals: dict[str, float] = dict.fromkeys(METRICS, 0.0)
    for day, fields in sorted(raw.items()):
        for fld, value in fields.items():
            parts = split_field(fld)
            if parts is None:
                continue
            tenant, agent, model, metric = parts
            if (q.tenant and tenant != q.tenant) or (q.agent and agent != q.agent) or (q.model and model != q.model):
                continue
            values = {"date": day, "tenant": tenant, "agent": agent, "model": model}
            key = tuple(values[g] for g in q.group_by)
            group = groups.setdefault(key, dict.fromkeys(totals, 0.0))
            group[metric] += value
            totals[metric] += value
    items = []
    for key, metrics in sorted(groups.items()):
        item: dict[str, Any] = dict(zip(q.group_by, key, strict=True))
        item.update(_shape(metrics))
        items.append(item)
    return {"start": q.start.isoformat(), "end": q.end.isoformat(), "groupBy": list(q.group_by),
            "totals": _shape(totals), "items": items}


def _shape(m: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {k: int(m[k]) for k in INT_METRICS}
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["cost"] = round(m["cost"], 9)
    out["saved_cost"] = round(m["saved_cost"], 9)
    out["avg_latency_ms"] = round(m["latency_ms_sum"] / m["requests"], 3) if m["requests"] else 0.0
    return out
