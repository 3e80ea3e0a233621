"""The relational store: Postgres (asyncpg pool) or SQLite (aiosqlite), one small interface.

Queries are written once in Postgres style (`$1`, `$2`); the SQLite side rewrites the
placeholders. `auto` uses Postgres when a DSN is configured and falls back to the
SQLite file while Postgres is unreachable (durable, unlike memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg

from strata_runtime.config import SqlStoreConfig
from strata_runtime.stores.health import BackendHealth

log = logging.getLogger("strata.stores")

_PLACEHOLDER = re.compile(r"\$(\d+)")


class SqlDatabase(Protocol):
    dialect: str

    async def execute(self, query: str, *args: Any) -> None: ...
    async def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None: ...
    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str, connect_timeout: float) -> PostgresDatabase:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10, timeout=connect_timeout, command_timeout=30)
        return cls(pool)

    async def execute(self, query: str, *args: Any) -> None:
        await self._pool.execute(query, *args)

    async def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._pool.executemany(query, list(rows))

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._pool.fetch(query, *args)]

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._pool.close()


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection):
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> SqliteDatabase:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        return cls(conn)

    @staticmethod
    def _translate(query: str) -> str:
        return _PLACEHOLDER.sub(lambda m: f"?{m.group(1)}", query)

    async def execute(self, query: str, *args: Any) -> None:
        async with self._lock:
            await self._conn.execute(self._translate(query), args)

    async def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._lock:
            await self._conn.execute("BEGIN")
            try:
                await self._conn.executemany(self._translate(query), [tuple(r) for r in rows])
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        async with self._lock:
            cursor = await self._conn.execute(self._translate(query), args)
            rows = await cursor.fetchall()
        return [dict(r) for r in rows]

    async def ping(self) -> None:
        await self.fetch("SELECT 1 AS ok")

    async def close(self) -> None:
        await self._conn.close()


class SqlConnector:
    """Owns the active database; `db` is Postgres when reachable, else the embedded SQLite."""

    def __init__(self, config: SqlStoreConfig, env: Mapping[str, str]):
        self.config = config
        self.dsn = env.get(config.dsn_env) if config.dsn_env else None
        self.wants_postgres = config.backend == "postgresql" or (config.backend == "auto" and bool(self.dsn))
        self.health = BackendHealth(
            name="sql",
            kind="postgresql" if self.wants_postgres else ("memory" if config.backend == "memory" else "sqlite"),
            required=config.backend == "postgresql",
        )
        self._postgres: PostgresDatabase | None = None
        self._embedded: SqliteDatabase | None = None

    @property
    def db(self) -> SqlDatabase:
        if self._postgres is not None and self.health.state == "ok":
            return self._postgres
        if self._embedded is None:
            raise RuntimeError("SqlConnector.start() was not awaited")
        return self._embedded

    async def start(self) -> None:
        path = ":memory:" if self.config.backend == "memory" else self.config.sqlite_path
        if not self.wants_postgres or self.config.backend == "auto":
            self._embedded = await SqliteDatabase.open(path)
        if not self.wants_postgres:
            self.health.mark_ok()
            return
        await self.health.probe(self._connect_postgres)
        self.health.keep_recovering(self._connect_postgres, self.config.recover_interval_seconds)

    async def _connect_postgres(self) -> None:
        if self._postgres is None:
            if not self.dsn:
                raise RuntimeError(f"environment variable {self.config.dsn_env} is not set")
            self._postgres = await asyncio.wait_for(
                PostgresDatabase.connect(self.dsn, self.config.connect_timeout_seconds),
                timeout=self.config.connect_timeout_seconds + 1,
            )
        await self._postgres.ping()

    async def ping(self) -> None:
        await self.db.ping()

    def report_failure(self, error: BaseException) -> None:
        if self.wants_postgres:
            self.health.mark_failed(error)

    async def close(self) -> None:
        await self.health.stop_recovering()
        for db in (self._postgres, self._embedded):
            if db is not None:
                with contextlib.suppress(Exception):
                    await db.close()
