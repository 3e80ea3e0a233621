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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite
import asyncpg

from strata_runtime.config import SqlStoreConfig
from strata_runtime.stores.health import BackendHealth, StoreUnavailable

log = logging.getLogger("strata.stores")

_PLACEHOLDER = re.compile(r"\$(\d+)")


class SqlDatabase(Protocol):
    dialect: str

    async def execute(self, query: str, *args: Any) -> None: ...
    async def apply_schema(self, statements: Sequence[str]) -> None: ...
    async def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None: ...
    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


# A pooled connection whose server went away (Postgres restarted, or its backend terminated by
# pg_terminate_backend, a failover, a pooler): asyncpg discards it when it is released, so one retry
# runs on a fresh connection. Every statement of the runtime is idempotent (upserts, ON CONFLICT DO
# NOTHING, deletes), so re-running one is safe. A backend terminated while its connection was idle
# or between two messages of a statement leaves asyncpg's protocol mid-operation: the next use
# raises InternalClientError ("cannot switch to state N; another operation (M) is in progress"),
# and the server's own notice of it arrives as AdminShutdownError (57P01) or CrashShutdownError.
_STALE_CONNECTION = (asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.InterfaceError,
                     asyncpg.exceptions.InternalClientError, asyncpg.exceptions.AdminShutdownError,
                     asyncpg.exceptions.CrashShutdownError, ConnectionResetError, BrokenPipeError)

# What a failed statement raises when Postgres (or the connection to it) failed, not the statement:
# callers answer it with StoreUnavailable (503 + Retry-After), never as a bug of their own.
CONNECTION_FAILURES = (OSError, asyncio.TimeoutError, asyncpg.exceptions.PostgresConnectionError,
                       asyncpg.exceptions.CannotConnectNowError, *_STALE_CONNECTION)

T = TypeVar("T")
SCHEMA_TIMEOUT_SECONDS = 600.0

# Postgres's CREATE ... IF NOT EXISTS is not safe against a concurrent creator of the same name: both
# see it missing and one fails on a catalog unique index (pods starting together, or one pod's first
# requests). Every schema change of the runtime therefore runs in one transaction holding this lock.
_SCHEMA_LOCK_KEY = 0x5374726174610001


class PostgresDatabase:
    """Every statement runs on a pooled connection within `command_timeout` seconds, the wait for the
    connection included: a hung server (stopped, partitioned, a stuck failover) fails the statement
    with TimeoutError instead of holding the request until the server comes back."""

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, command_timeout: float = 5.0):
        self._pool = pool
        self.command_timeout = command_timeout

    @classmethod
    async def connect(cls, dsn: str, connect_timeout: float, max_connections: int,
                      command_timeout: float = 5.0) -> PostgresDatabase:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_connections, timeout=connect_timeout,
                                         command_timeout=command_timeout)
        return cls(pool, command_timeout)

    async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]], seconds: float | None = None) -> T:
        """`op` on a pooled connection, the wait for it included, within `seconds` (`command_timeout`). A connection
        whose statement timed out is closed, not handed back: the pool's release would first wait (as
        long again) for the hung server to confirm the statement's cancellation and reset the session."""
        deadline = asyncio.get_running_loop().time() + (seconds or self.command_timeout)
        async with asyncio.timeout_at(deadline):
            conn = await self._pool.acquire()
        try:
            async with asyncio.timeout_at(deadline):
                return await op(conn)
        except TimeoutError:
            conn.terminate()
            raise
        finally:
            await self._pool.release(conn)  # at once for a closed connection

    async def _retry_once(self, op: Callable[[asyncpg.Connection], Awaitable[T]], seconds: float | None = None) -> T:
        try:
            return await self._run(op, seconds)
        except _STALE_CONNECTION as e:
            log.info("postgres connection was stale; retrying once", extra={"error": type(e).__name__})
            return await self._run(op, seconds)

    async def execute(self, query: str, *args: Any) -> None:
        await self._retry_once(lambda conn: conn.execute(query, *args))

    async def apply_schema(self, statements: Sequence[str]) -> None:
        """Run idempotent DDL atomically, serialised with every other pod's schema changes."""
        # DDL gets longer than a statement: an index built on a large table on upgrade can take
        # minutes, and cut at the statement deadline it would be rolled back and retried forever.
        timeout = max(self.command_timeout, SCHEMA_TIMEOUT_SECONDS)

        async def apply(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_KEY, timeout=timeout)
                for statement in statements:
                    await conn.execute(statement, timeout=timeout)

        await self._retry_once(apply, timeout)

    async def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = list(rows)
        await self._retry_once(lambda conn: conn.executemany(query, batch))

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._retry_once(lambda conn: conn.fetch(query, *args))]

    async def ping(self) -> None:
        await self._retry_once(lambda conn: conn.fetchval("SELECT 1"))

    def pool_stats(self) -> dict[str, int]:
        return {"size": self._pool.get_size(), "idle": self._pool.get_idle_size(), "max": self._pool.get_max_size()}

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

    async def apply_schema(self, statements: Sequence[str]) -> None:
        # BEGIN IMMEDIATE takes SQLite's write lock: another process sharing the file waits for it.
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    await self._conn.execute(statement)
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

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

    @property
    def durable_db(self) -> SqlDatabase:
        """The configured database and never a fallback: session spill and history must not fork
        into a pod-local SQLite file that other pods (and this one, once Postgres is back) never read."""
        if not self.wants_postgres:
            return self.db
        if self._postgres is None or self.health.state != "ok":
            raise StoreUnavailable("session history store (Postgres) unreachable; retry shortly",
                                   retry_after_seconds=self.config.recover_interval_seconds)
        return self._postgres

    def pool_stats(self) -> dict[str, int]:
        return self._postgres.pool_stats() if self._postgres is not None else {}

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
                PostgresDatabase.connect(self.dsn, self.config.connect_timeout_seconds, self.config.max_connections,
                                         self.config.command_timeout_seconds),
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


class DurableTables:
    """Tables that live only in the configured database (`SqlConnector.durable_db`, never the SQLite
    fallback of `auto`), e.g. the session spill and the usage history: created on first use in each
    database (under a lock: a new pod's first requests arrive together), and every operation's
    connection failure reported to the connector's health and raised as StoreUnavailable (503 +
    Retry-After) naming `what`."""

    def __init__(self, sql: SqlConnector, schema: Sequence[str], what: str):
        self.sql = sql
        self.schema = schema
        self.what = what
        self._ready: dict[int, SqlDatabase] = {}  # id -> the database itself (an id may be reused)
        self._schema_lock = asyncio.Lock()

    async def _db(self) -> SqlDatabase:
        db = self.sql.durable_db
        if self._ready.get(id(db)) is not db:
            async with self._schema_lock:
                if self._ready.get(id(db)) is not db:
                    await db.apply_schema(self.schema)
                    self._ready[id(db)] = db
        return db

    async def run(self, op: Callable[[SqlDatabase], Awaitable[T]]) -> T:
        try:
            return await op(await self._db())
        except CONNECTION_FAILURES as e:
            self.sql.report_failure(e)
            raise StoreUnavailable(f"{self.what} store (SQL) unreachable; retry shortly",
                                   retry_after_seconds=self.sql.config.recover_interval_seconds) from e
