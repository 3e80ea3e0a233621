"""The evolution store on Postgres or SQLite (the runtime's `SqlDatabase`), with numbered migrations.

Migrations are applied in order and recorded in `strata_evolution_migrations`; each one runs under
the database's schema lock (`SqlDatabase.apply_schema`) and is idempotent (`IF NOT EXISTS`), so two
pods migrating at once both succeed. Version numbers come
from `MAX(version) + 1` under a unique key: a pod that loses the race for a number retries.
JSON is stored as text so both dialects read it the same way.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import asyncpg
import orjson

from strata_runtime.evolution.store import Arm, EvolutionEvent, EvolutionStore, Experiment, Version, content_hash
from strata_runtime.stores.sql import SqlDatabase

_SERIAL = {"postgresql": "BIGSERIAL PRIMARY KEY", "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT"}

MIGRATIONS: list[list[str]] = [
    [  # 1: versions, active pointers, events
        """CREATE TABLE IF NOT EXISTS strata_evolution_versions (
            kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, content TEXT NOT NULL,
            content_hash TEXT NOT NULL, author TEXT NOT NULL, note TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (kind, name, version))""",
        """CREATE TABLE IF NOT EXISTS strata_evolution_active (
            kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (kind, name))""",
        """CREATE TABLE IF NOT EXISTS strata_evolution_events (
            seq {serial}, kind TEXT NOT NULL, name TEXT NOT NULL, action TEXT NOT NULL, version INTEGER,
            author TEXT NOT NULL, detail TEXT NOT NULL, at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS strata_evolution_events_name ON strata_evolution_events (kind, name, seq)",
    ],
    [  # 2: A/B experiments and their outcomes
        """CREATE TABLE IF NOT EXISTS strata_evolution_experiments (
            id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, arms TEXT NOT NULL,
            status TEXT NOT NULL, author TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS strata_evolution_outcomes (
            seq {serial}, experiment_id TEXT NOT NULL, arm TEXT NOT NULL, session_id TEXT NOT NULL,
            success SMALLINT, latency_ms DOUBLE PRECISION, tokens BIGINT, feedback SMALLINT,
            at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS strata_evolution_outcomes_exp ON strata_evolution_outcomes (experiment_id, arm)",
    ],
]

_DUPLICATE = (asyncpg.exceptions.UniqueViolationError, sqlite3.IntegrityError)


def _version(row: dict[str, Any]) -> Version:
    return Version(row["kind"], row["name"], int(row["version"]), orjson.loads(row["content"]), row["content_hash"],
                   row["author"], row["note"], float(row["created_at"]))


def _experiment(row: dict[str, Any]) -> Experiment:
    arms = tuple(Arm(a["label"], int(a["version"]), int(a["weight"])) for a in orjson.loads(row["arms"]))
    return Experiment(row["id"], row["kind"], row["name"], arms, row["status"], row["author"],
                      float(row["created_at"]))


class SqlEvolutionStore(EvolutionStore):
    def __init__(self, db: SqlDatabase):
        self.db = db

    async def migrate(self) -> None:
        await self.db.apply_schema(["CREATE TABLE IF NOT EXISTS strata_evolution_migrations ("
                                    "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"])
        done = {int(r["version"]) for r in await self.db.fetch("SELECT version FROM strata_evolution_migrations")}
        serial = _SERIAL[self.db.dialect]
        for number, statements in enumerate(MIGRATIONS, start=1):
            if number in done:
                continue
            await self.db.apply_schema([statement.replace("{serial}", serial) for statement in statements])
            await self.db.execute("INSERT INTO strata_evolution_migrations (version, applied_at) VALUES ($1, $2) "
                                  "ON CONFLICT (version) DO NOTHING", number, time.time())

    async def schema_version(self) -> int:
        rows = await self.db.fetch("SELECT MAX(version) AS v FROM strata_evolution_migrations")
        return int(rows[0]["v"] or 0)

    async def _insert_version(self, kind: str, name: str, content: dict[str, Any], author: str,
                              note: str) -> Version:
        text, digest = orjson.dumps(content).decode(), content_hash(content)
        for _ in range(20):
            rows = await self.db.fetch("SELECT COALESCE(MAX(version), 0) AS v FROM strata_evolution_versions "
                                       "WHERE kind = $1 AND name = $2", kind, name)
            number = int(rows[0]["v"]) + 1
            now = time.time()
            try:
                await self.db.execute(
                    "INSERT INTO strata_evolution_versions (kind, name, version, content, content_hash, author, "
                    "note, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    kind, name, number, text, digest, author, note, now)
            except _DUPLICATE:
                continue  # another writer took this number
            return Version(kind, name, number, content, digest, author, note, now)
        raise RuntimeError(f"could not allocate a version number for {kind} {name!r}")

    async def versions(self, kind: str, name: str) -> list[Version]:
        rows = await self.db.fetch("SELECT * FROM strata_evolution_versions WHERE kind = $1 AND name = $2 "
                                   "ORDER BY version", kind, name)
        return [_version(r) for r in rows]

    async def _get_version(self, kind: str, name: str, version: int) -> Version | None:
        rows = await self.db.fetch("SELECT * FROM strata_evolution_versions WHERE kind = $1 AND name = $2 "
                                   "AND version = $3", kind, name, version)
        return _version(rows[0]) if rows else None

    async def _set_active(self, kind: str, name: str, version: int) -> None:
        await self.db.execute("INSERT INTO strata_evolution_active (kind, name, version) VALUES ($1, $2, $3) "
                              "ON CONFLICT (kind, name) DO UPDATE SET version = EXCLUDED.version", kind, name, version)

    async def _active_number(self, kind: str, name: str) -> int | None:
        rows = await self.db.fetch("SELECT version FROM strata_evolution_active WHERE kind = $1 AND name = $2",
                                   kind, name)
        return int(rows[0]["version"]) if rows else None

    async def _insert_event(self, kind: str, name: str, action: str, *, version: int | None, author: str,
                            detail: dict[str, Any]) -> None:
        await self.db.execute("INSERT INTO strata_evolution_events (kind, name, action, version, author, detail, at) "
                              "VALUES ($1, $2, $3, $4, $5, $6, $7)", kind, name, action, version, author,
                              orjson.dumps(detail).decode(), time.time())

    async def events(self, kind: str | None = None, name: str | None = None,
                     limit: int = 100) -> list[EvolutionEvent]:
        rows = await self.db.fetch(
            "SELECT * FROM strata_evolution_events WHERE ($1::text IS NULL OR kind = $1::text) "
            "AND ($2::text IS NULL OR name = $2::text) ORDER BY seq DESC LIMIT $3"
            if self.db.dialect == "postgresql" else
            "SELECT * FROM strata_evolution_events WHERE ($1 IS NULL OR kind = $1) AND ($2 IS NULL OR name = $2) "
            "ORDER BY seq DESC LIMIT $3", kind, name, limit)
        return [EvolutionEvent(int(r["seq"]), r["kind"], r["name"], r["action"],
                               None if r["version"] is None else int(r["version"]), r["author"],
                               orjson.loads(r["detail"]), float(r["at"])) for r in rows]

    async def _insert_experiment(self, experiment: Experiment) -> None:
        await self.db.execute(
            "INSERT INTO strata_evolution_experiments (id, kind, name, arms, status, author, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)", experiment.id, experiment.kind, experiment.name,
            orjson.dumps([a.to_json() for a in experiment.arms]).decode(), experiment.status, experiment.author,
            experiment.created_at)

    async def _get_experiment(self, experiment_id: str) -> Experiment | None:
        rows = await self.db.fetch("SELECT * FROM strata_evolution_experiments WHERE id = $1", experiment_id)
        return _experiment(rows[0]) if rows else None

    async def _set_experiment_status(self, experiment_id: str, status: str) -> None:
        await self.db.execute("UPDATE strata_evolution_experiments SET status = $2 WHERE id = $1",
                              experiment_id, status)

    async def _insert_outcome(self, experiment_id: str, arm: str, session_id: str, *, success: bool | None,
                              latency_ms: float | None, tokens: int | None, feedback: int | None) -> None:
        await self.db.execute(
            "INSERT INTO strata_evolution_outcomes (experiment_id, arm, session_id, success, latency_ms, tokens, "
            "feedback, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", experiment_id, arm, session_id,
            None if success is None else int(success), latency_ms, tokens, feedback, time.time())

    async def _aggregate(self, experiment_id: str) -> list[dict[str, Any]]:
        return await self.db.fetch(
            "SELECT arm, COUNT(success) AS outcomes, SUM(CASE WHEN success = 1 THEN 1 ELSE 0 END) AS successes, "
            "SUM(latency_ms) AS latency_sum, COUNT(latency_ms) AS latency_count, SUM(tokens) AS tokens, "
            "SUM(CASE WHEN feedback = 1 THEN 1 ELSE 0 END) AS up, SUM(CASE WHEN feedback = -1 THEN 1 ELSE 0 END) "
            "AS down FROM strata_evolution_outcomes WHERE experiment_id = $1 GROUP BY arm", experiment_id)
