"""Postgres failing under the SQL store without dying outright.

* Backends terminated (pg_terminate_backend: a failover, an operator, a pooler): a statement either
  succeeds (retried once on a fresh connection) or fails as StoreUnavailable (503 + Retry-After),
  never with a client error the callers do not know.
* The server hung (SIGSTOP): a statement fails with StoreUnavailable once `commandTimeoutSeconds`
  is spent, the wait for a pooled connection included, instead of waiting for the server.

On a private Postgres (tests/support/stores.py), never the shared one.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from strata_runtime.config import SqlStoreConfig
from strata_runtime.memory.spill import SpillStore
from strata_runtime.memory.state import SessionState, Turn
from strata_runtime.stores.health import StoreUnavailable
from strata_runtime.stores.sql import SqlConnector
from tests.support.stores import PostgresServer

ROUNDS = 60
CALLERS = 4


@pytest.fixture
async def postgres() -> AsyncIterator[PostgresServer]:
    server = await asyncio.to_thread(PostgresServer().start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def test_backends_terminated_at_any_moment_fail_as_store_unavailable_or_not_at_all(
        postgres: PostgresServer, tmp_path: Path) -> None:
    connector = SqlConnector(SqlStoreConfig(backend="postgresql", dsn_env="PG", max_connections=CALLERS,
                                            sqlite_path=str(tmp_path / "unused.db")), {"PG": postgres.dsn})
    await connector.start()
    spill = SpillStore(connector)
    admin = await asyncpg.connect(postgres.dsn)
    outcomes: Counter[str] = Counter()
    try:
        assert connector.health.state == "ok"
        state = SessionState(tenant="t", session_id="s", agent_id="a")
        state.turns[0] = Turn(seq=0, role="user", content="hello", ts=0.0)
        state.next_seq = 2
        await spill.spill(state)

        async def call() -> None:
            try:
                loaded = await spill.load("t", "s")
                assert loaded is not None and loaded.next_seq == 2
                outcomes["ok"] += 1
            except StoreUnavailable:
                outcomes["store_unavailable"] += 1
                connector.health.mark_ok()  # as the recovery probe would, at once
            except Exception as e:  # anything else reaches the client as a 500
                outcomes[f"{type(e).__module__}.{type(e).__name__}"] += 1

        for i in range(ROUNDS):
            async def terminate(delay: float = 0.0005 * (i % 20)) -> None:
                await asyncio.sleep(delay)
                await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'")

            await asyncio.gather(terminate(), *(call() for _ in range(CALLERS)))
        print("outcomes:", dict(outcomes))
        assert set(outcomes) <= {"ok", "store_unavailable"}, dict(outcomes)
        assert outcomes["ok"] > 0
    finally:
        await admin.close()
        await connector.close()


async def test_a_hung_server_fails_statements_as_store_unavailable_instead_of_waiting_for_it(
        postgres: PostgresServer, tmp_path: Path) -> None:
    connector = SqlConnector(SqlStoreConfig(backend="postgresql", dsn_env="PG", max_connections=2,
                                            command_timeout_seconds=1.0, recover_interval_seconds=0.2,
                                            sqlite_path=str(tmp_path / "unused.db")), {"PG": postgres.dsn})
    await connector.start()
    spill = SpillStore(connector)
    try:
        assert await spill.load("t", "s") is None
        postgres.pause()
        try:
            # More callers than connections: some wait for the pool, some for a statement; none for long.
            # (The outer bound only keeps a broken runtime from hanging the test: the server stays stopped.)
            async with asyncio.timeout(30):
                outcomes = await asyncio.gather(*(spill.load("t", f"s{i}") for i in range(5)),
                                                return_exceptions=True)
        finally:
            postgres.resume()
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
        assert connector.health.state == "down"
        for _ in range(100):  # the recovery probe brings it back by itself
            if connector.health.state == "ok":
                break
            await asyncio.sleep(0.1)
        assert await spill.load("t", "s") is None
    finally:
        postgres.resume()
        await connector.close()
