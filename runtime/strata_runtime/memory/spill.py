"""Durable SQL side of the memory engine (Postgres, or the embedded SQLite).

* ``strata_session_spill``: the partial turn buffer of a released session (idle or shutdown),
  reloaded when the session comes back and Redis no longer has it.
* ``strata_session_history``: the raw turns of every archived batch, keyed by the same
  deterministic ``batch_id`` as the L3 summary, so the full transcript of a session stays
  readable after its buffer was trimmed and a retried archive writes nothing twice.
* ``strata_archive_parked``: archived batches whose long-term summary is not in the vector store
  yet (the archive kept failing, or the buffer cap moved them): the re-drive picks them up when
  the vector store answers again (``MemoryEngine.redrive_parked``). ``summary`` holds the summary
  when the LLM call had succeeded (only the vector write is missing), NULL when it is still to make.

Tables are created with ``CREATE TABLE IF NOT EXISTS`` on first use, once per process and under the
database's schema lock (``SqlDatabase.apply_schema``), so pods starting together do not race.

Only the configured database is used, never the SQLite fallback of ``auto``: a session spilled
into a pod-local file would be invisible to every other pod. While Postgres is unreachable the
operations raise ``StoreUnavailable`` (503 + Retry-After for a request that needs them).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from strata_runtime.memory.state import SessionState, Turn
from strata_runtime.stores.sql import DurableTables, SqlConnector

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS strata_session_spill (
        tenant TEXT NOT NULL, session_id TEXT NOT NULL, agent_id TEXT NOT NULL,
        next_seq BIGINT NOT NULL, payload TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, session_id))""",
    """CREATE TABLE IF NOT EXISTS strata_session_history (
        tenant TEXT NOT NULL, session_id TEXT NOT NULL, batch_id TEXT NOT NULL, agent_id TEXT NOT NULL,
        first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, turns TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant, session_id, batch_id))""",
    """CREATE TABLE IF NOT EXISTS strata_archive_parked (
        tenant TEXT NOT NULL, session_id TEXT NOT NULL, batch_id TEXT NOT NULL, agent_id TEXT NOT NULL,
        channel TEXT NOT NULL, first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, summary TEXT,
        reason TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_at DOUBLE PRECISION NOT NULL,
        parked_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant, session_id, batch_id))""",
)

_PARKED_COLUMNS = ("tenant, session_id, batch_id, agent_id, channel, first_seq, last_seq, summary, reason, "
                   "attempts")


@dataclass(frozen=True)
class ParkedBatch:
    """An archived batch (its turns are in the SQL history) still missing its long-term summary."""

    tenant: str
    session_id: str
    batch_id: str
    agent_id: str
    channel: str
    first_seq: int
    last_seq: int
    summary: str | None
    reason: str
    attempts: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ParkedBatch:
        return cls(tenant=row["tenant"], session_id=row["session_id"], batch_id=row["batch_id"],
                   agent_id=row["agent_id"], channel=row["channel"], first_seq=int(row["first_seq"]),
                   last_seq=int(row["last_seq"]), summary=row["summary"], reason=row["reason"],
                   attempts=int(row["attempts"]))


class SpillStore:
    def __init__(self, sql: SqlConnector):
        self._tables = DurableTables(sql, _SCHEMA, "session history")

    async def spill(self, state: SessionState) -> None:
        """Write the session as it is now (`state` may change while the write waits for a connection)."""
        args = (state.tenant, state.session_id, state.agent_id, state.next_seq, state.to_spill().decode(), time.time())
        await self._tables.run(lambda db: db.execute(
            "INSERT INTO strata_session_spill (tenant, session_id, agent_id, next_seq, payload, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, session_id) DO UPDATE SET "
            "agent_id = excluded.agent_id, next_seq = excluded.next_seq, payload = excluded.payload, "
            "updated_at = excluded.updated_at WHERE strata_session_spill.next_seq <= excluded.next_seq",
            *args))

    async def load(self, tenant: str, session_id: str) -> SessionState | None:
        rows = await self._tables.run(lambda db: db.fetch(
            "SELECT payload FROM strata_session_spill WHERE tenant = $1 AND session_id = $2", tenant, session_id))
        return SessionState.from_spill(tenant, session_id, rows[0]["payload"]) if rows else None

    async def record_batch(self, state: SessionState, batch_id: str, turns: list[Turn]) -> None:
        payload = orjson.dumps([t.public() for t in turns]).decode()
        await self._tables.run(lambda db: db.execute(
            "INSERT INTO strata_session_history (tenant, session_id, batch_id, agent_id, first_seq, last_seq, "
            "turns, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT (tenant, session_id, batch_id) DO NOTHING",
            state.tenant, state.session_id, batch_id, state.agent_id, turns[0].seq, turns[-1].seq, payload,
            time.time()))

    async def archived_turns(self, tenant: str, session_id: str) -> list[dict[str, Any]]:
        rows = await self._tables.run(lambda db: db.fetch(
            "SELECT turns FROM strata_session_history WHERE tenant = $1 AND session_id = $2 ORDER BY first_seq",
            tenant, session_id))
        out: list[dict[str, Any]] = []
        for row in rows:
            out.extend(orjson.loads(row["turns"]))
        return out

    async def delete(self, tenant: str, session_id: str) -> bool:
        async def run(db: Any) -> bool:
            found = await db.fetch(
                "SELECT 1 AS one FROM strata_session_spill WHERE tenant = $1 AND session_id = $2 UNION ALL "
                "SELECT 1 AS one FROM strata_session_history WHERE tenant = $1 AND session_id = $2",
                tenant, session_id)
            await db.execute("DELETE FROM strata_session_spill WHERE tenant = $1 AND session_id = $2",
                             tenant, session_id)
            await db.execute("DELETE FROM strata_session_history WHERE tenant = $1 AND session_id = $2",
                             tenant, session_id)
            await db.execute("DELETE FROM strata_archive_parked WHERE tenant = $1 AND session_id = $2",
                             tenant, session_id)
            return bool(found)

        return await self._tables.run(run)

    # ----------------------------------------------------------------------------- parked archives

    async def park(self, state: SessionState, batch_id: str, turns: list[Turn], *, channel: str,
                   summary: str | None, reason: str) -> None:
        """Park a batch whose summary did not reach the vector store (idempotent: parking it again keeps
        the first row, but a summary made meanwhile is kept)."""
        now = time.time()
        await self._tables.run(lambda db: db.execute(
            "INSERT INTO strata_archive_parked (tenant, session_id, batch_id, agent_id, channel, first_seq, "
            "last_seq, summary, reason, attempts, next_attempt_at, parked_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $10) ON CONFLICT (tenant, session_id, batch_id) "
            "DO UPDATE SET summary = COALESCE(strata_archive_parked.summary, excluded.summary)",
            state.tenant, state.session_id, batch_id, state.agent_id, channel, turns[0].seq, turns[-1].seq,
            summary, reason, now))

    async def claim_due(self, limit: int, lease_seconds: float) -> list[ParkedBatch]:
        """Claim parked batches with a summary whose back-off has passed, oldest first: their next
        attempt moves `lease_seconds` ahead, so another pod's pass skips them meanwhile (and a pod that
        dies holding them only delays them by the lease)."""
        now = time.time()
        rows = await self._tables.run(lambda db: db.fetch(
            "UPDATE strata_archive_parked SET next_attempt_at = $2 WHERE (tenant, session_id, batch_id) IN "
            "(SELECT tenant, session_id, batch_id FROM strata_archive_parked WHERE summary IS NOT NULL "
            "AND next_attempt_at <= $1 ORDER BY next_attempt_at, parked_at LIMIT $3) AND next_attempt_at <= $1 "
            f"RETURNING {_PARKED_COLUMNS}", now, now + lease_seconds, limit))
        return sorted((ParkedBatch.from_row(r) for r in rows), key=lambda b: (b.tenant, b.session_id, b.first_seq))

    async def parked_unsummarised(self, tenant: str, session_id: str, limit: int) -> list[ParkedBatch]:
        """A session's parked batches that still need their summary made (an LLM call), oldest first."""
        rows = await self._tables.run(lambda db: db.fetch(
            f"SELECT {_PARKED_COLUMNS} FROM strata_archive_parked WHERE tenant = $1 AND session_id = $2 "
            "AND summary IS NULL AND next_attempt_at <= $3 ORDER BY first_seq LIMIT $4",
            tenant, session_id, time.time(), limit))
        return [ParkedBatch.from_row(r) for r in rows]

    async def parked_count(self) -> int:
        rows = await self._tables.run(lambda db: db.fetch("SELECT COUNT(*) AS n FROM strata_archive_parked"))
        return int(rows[0]["n"])

    async def batch_turns(self, tenant: str, session_id: str, batch_id: str) -> list[dict[str, Any]]:
        rows = await self._tables.run(lambda db: db.fetch(
            "SELECT turns FROM strata_session_history WHERE tenant = $1 AND session_id = $2 AND batch_id = $3",
            tenant, session_id, batch_id))
        return list(orjson.loads(rows[0]["turns"])) if rows else []

    async def keep_summary(self, batch: ParkedBatch, summary: str) -> None:
        await self._tables.run(lambda db: db.execute(
            "UPDATE strata_archive_parked SET summary = $4 WHERE tenant = $1 AND session_id = $2 AND batch_id = $3",
            batch.tenant, batch.session_id, batch.batch_id, summary))

    async def unpark(self, batch: ParkedBatch) -> None:
        await self._tables.run(lambda db: db.execute(
            "DELETE FROM strata_archive_parked WHERE tenant = $1 AND session_id = $2 AND batch_id = $3",
            batch.tenant, batch.session_id, batch.batch_id))

    async def back_off(self, batch: ParkedBatch, delay_seconds: float, *, count: bool = True) -> None:
        await self._tables.run(lambda db: db.execute(
            "UPDATE strata_archive_parked SET attempts = attempts + $5, next_attempt_at = $4 "
            "WHERE tenant = $1 AND session_id = $2 AND batch_id = $3",
            batch.tenant, batch.session_id, batch.batch_id, time.time() + delay_seconds, 1 if count else 0))
