"""Durable SQL side of the memory engine (Postgres, or the embedded SQLite).

* ``strata_session_spill``: the partial turn buffer of a released session (idle or shutdown),
  reloaded when the session comes back and Redis no longer has it.
* ``strata_session_history``: the raw turns of every archived batch, keyed by the same
  deterministic ``batch_id`` as the L3 summary, so the full transcript of a session stays
  readable after its buffer was trimmed and a retried archive writes nothing twice.

Tables are created with ``CREATE TABLE IF NOT EXISTS`` (safe to run on every start, by every pod).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from strata_runtime.memory.state import SessionState, Turn
from strata_runtime.stores.sql import SqlConnector

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS strata_session_spill (
        tenant TEXT NOT NULL, session_id TEXT NOT NULL, agent_id TEXT NOT NULL,
        next_seq BIGINT NOT NULL, payload TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, session_id))""",
    """CREATE TABLE IF NOT EXISTS strata_session_history (
        tenant TEXT NOT NULL, session_id TEXT NOT NULL, batch_id TEXT NOT NULL, agent_id TEXT NOT NULL,
        first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, turns TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant, session_id, batch_id))""",
)


class SpillStore:
    def __init__(self, sql: SqlConnector):
        self.sql = sql
        self._ready: set[int] = set()

    async def _db(self) -> Any:
        db = self.sql.db
        if id(db) not in self._ready:
            for statement in _SCHEMA:
                await db.execute(statement)
            self._ready.add(id(db))
        return db

    async def spill(self, state: SessionState) -> None:
        db = await self._db()
        await db.execute(
            "INSERT INTO strata_session_spill (tenant, session_id, agent_id, next_seq, payload, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, session_id) DO UPDATE SET "
            "agent_id = excluded.agent_id, next_seq = excluded.next_seq, payload = excluded.payload, "
            "updated_at = excluded.updated_at WHERE strata_session_spill.next_seq <= excluded.next_seq",
            state.tenant, state.session_id, state.agent_id, state.next_seq, state.to_spill().decode(), time.time())

    async def load(self, tenant: str, session_id: str) -> SessionState | None:
        db = await self._db()
        rows = await db.fetch("SELECT payload FROM strata_session_spill WHERE tenant = $1 AND session_id = $2",
                              tenant, session_id)
        return SessionState.from_spill(tenant, session_id, rows[0]["payload"]) if rows else None

    async def record_batch(self, state: SessionState, batch_id: str, turns: list[Turn]) -> None:
        db = await self._db()
        payload = orjson.dumps([t.public() for t in turns]).decode()
        await db.execute(
            "INSERT INTO strata_session_history (tenant, session_id, batch_id, agent_id, first_seq, last_seq, "
            "turns, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT (tenant, session_id, batch_id) DO NOTHING",
            state.tenant, state.session_id, batch_id, state.agent_id, turns[0].seq, turns[-1].seq, payload,
            time.time())

    async def archived_turns(self, tenant: str, session_id: str) -> list[dict[str, Any]]:
        db = await self._db()
        rows = await db.fetch("SELECT turns FROM strata_session_history WHERE tenant = $1 AND session_id = $2 "
                              "ORDER BY first_seq", tenant, session_id)
        out: list[dict[str, Any]] = []
        for row in rows:
            out.extend(orjson.loads(row["turns"]))
        return out

    async def delete(self, tenant: str, session_id: str) -> bool:
        db = await self._db()
        found = await db.fetch(
            "SELECT 1 AS one FROM strata_session_spill WHERE tenant = $1 AND session_id = $2 UNION ALL "
            "SELECT 1 AS one FROM strata_session_history WHERE tenant = $1 AND session_id = $2", tenant, session_id)
        await db.execute("DELETE FROM strata_session_spill WHERE tenant = $1 AND session_id = $2", tenant, session_id)
        await db.execute("DELETE FROM strata_session_history WHERE tenant = $1 AND session_id = $2",
                         tenant, session_id)
        return bool(found)
