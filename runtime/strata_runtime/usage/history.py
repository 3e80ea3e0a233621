"""Usage history in the relational store: one row of day totals per day x scope x source x tenant x agent x model.

``strata_usage_daily`` keeps the recorder's counters (the same dimensions and metrics as the Redis
hashes) past the hashes' TTL and across restarts of a runtime without Redis:

* ``scope`` is the Redis key prefix, so runtimes sharing one database keep their usage apart.
* ``source`` says whose counts a row holds. ``redis``: a copy of the shared day hash that every pod
  increments; any pod may write it, and a write only ever raises a counter (``GREATEST``/``MAX``):
  the hash only grows during its day, so two pods copying it at once, or a copy older than the row,
  never count anything twice or move a total back. ``pod:<host>:<id>``: the in-process counts of
  one process (Redis not configured, or unreachable when they were recorded), which no other
  process holds; the id is new at each start, so a restarted process never overwrites its
  predecessor's rows and a query sums every process' rows.

Like the session spill, the table lives only in the configured database, never in the SQLite fallback
of ``auto`` (a pod-local file other pods never read): while Postgres is unreachable the calls raise
``StoreUnavailable``. It is created on first use under the database's schema lock.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from strata_runtime.stores.sql import DurableTables, SqlConnector
from strata_runtime.usage.fields import FLOAT_METRICS, METRICS, split_field

SHARED_SOURCE = "redis"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS strata_usage_daily (
        day TEXT NOT NULL, scope TEXT NOT NULL, source TEXT NOT NULL, tenant TEXT NOT NULL, agent TEXT NOT NULL,
        model TEXT NOT NULL, requests BIGINT NOT NULL, errors BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL, cache_hits BIGINT NOT NULL, saved_prompt_tokens BIGINT NOT NULL,
        saved_completion_tokens BIGINT NOT NULL, cost DOUBLE PRECISION NOT NULL,
        saved_cost DOUBLE PRECISION NOT NULL, latency_ms_sum DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (scope, day, tenant, agent, model, source))""",
)

_COLUMNS = "day, scope, source, tenant, agent, model, " + ", ".join(METRICS) + ", updated_at"
_PLACEHOLDERS = ", ".join(f"${i}" for i in range(1, len(METRICS) + 8))


def _upsert(dialect: str) -> str:
    greatest = "GREATEST" if dialect == "postgresql" else "MAX"  # SQLite's MAX of two values is scalar
    raise_only = ", ".join(f"{m} = {greatest}(strata_usage_daily.{m}, excluded.{m})" for m in METRICS)
    return (f"INSERT INTO strata_usage_daily ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
            "ON CONFLICT (scope, day, tenant, agent, model, source) "
            f"DO UPDATE SET {raise_only}, updated_at = excluded.updated_at")


def local_source() -> str:
    """This process' source: its host (the pod name) and an id new at every start."""
    return f"pod:{socket.gethostname()}:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class HistoryRow:
    day: str
    source: str
    fields: dict[str, float]  # `{tenant}:{agent}:{model}:{metric}` -> value, as in the Redis hashes


RowKey = tuple[str, str, str]  # (tenant, agent, model)


def rows_of(fields: Mapping[str, float]) -> dict[RowKey, dict[str, float]]:
    """The counters of one day hash (or in-process day table), per (tenant, agent, model)."""
    out: dict[RowKey, dict[str, float]] = {}
    for fld, value in fields.items():
        parts = split_field(fld)
        if parts is None:
            continue
        tenant, agent, model, metric = parts
        out.setdefault((tenant, agent, model), dict.fromkeys(METRICS, 0.0))[metric] += value
    return out


class UsageHistory:
    def __init__(self, sql: SqlConnector, scope: str):
        self.scope = scope
        self._tables = DurableTables(sql, _SCHEMA, "usage history")

    async def write(self, source: str, days: Mapping[str, Mapping[RowKey, Mapping[str, float]]]) -> int:
        """Store the day totals of `source` (`{day: {(tenant, agent, model): {metric: value}}}`, see
        `rows_of`); returns the rows written."""
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        for day, day_rows in days.items():
            for (tenant, agent, model), metrics in day_rows.items():
                rows.append((day, self.scope, source, tenant, agent, model,
                             *(metrics[m] if m in FLOAT_METRICS else int(metrics[m]) for m in METRICS), now))
        if rows:
            await self._tables.run(lambda db: db.executemany(_upsert(db.dialect), rows))
        return len(rows)

    async def prune(self, before: dt.date) -> None:
        """Delete this scope's rows of the days before `before`."""
        await self._tables.run(lambda db: db.execute(
            "DELETE FROM strata_usage_daily WHERE scope = $1 AND day < $2", self.scope, before.isoformat()))

    async def read(self, start: dt.date, end: dt.date, *, tenant: str | None = None, agent: str | None = None,
                   model: str | None = None) -> list[HistoryRow]:
        """The rows of [start, end] (ISO dates compare as text), narrowed by the filters given."""
        where = ["scope = $1", "day >= $2", "day <= $3"]
        args: list[Any] = [self.scope, start.isoformat(), end.isoformat()]
        for column, value in (("tenant", tenant), ("agent", agent), ("model", model)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        query = f"SELECT {_COLUMNS} FROM strata_usage_daily WHERE {' AND '.join(where)}"
        found = await self._tables.run(lambda db: db.fetch(query, *args))
        return [HistoryRow(r["day"], r["source"], _fields(r)) for r in found]


def _fields(row: Mapping[str, Any]) -> dict[str, float]:
    base = f"{row['tenant']}:{row['agent']}:{row['model']}:"
    return {base + m: float(row[m]) for m in METRICS if row[m]}


def merge_days(target: dict[str, dict[str, float]], days: Iterable[tuple[str, Mapping[str, float]]]) -> None:
    for day, fields in days:
        bucket = target.setdefault(day, {})
        for fld, value in fields.items():
            bucket[fld] = bucket.get(fld, 0.0) + value
