"""The evolution store of a running runtime: over the configured SQL database, migrated on first use.

It always uses the *durable* database (Postgres when configured; never the pod-local SQLite
fallback, which other pods would not see): while Postgres is unreachable the calls answer 503.
"""

from __future__ import annotations

import asyncio

from strata_runtime.evolution.sql import SqlEvolutionStore
from strata_runtime.stores.sql import SqlConnector, SqlDatabase


class EvolutionService:
    def __init__(self, sql: SqlConnector):
        self._sql = sql
        self._stores: dict[int, tuple[SqlDatabase, SqlEvolutionStore]] = {}
        self._lock = asyncio.Lock()

    async def store(self) -> SqlEvolutionStore:
        db = self._sql.durable_db
        found = self._stores.get(id(db))
        if found is not None and found[0] is db:
            return found[1]
        async with self._lock:
            found = self._stores.get(id(db))
            if found is not None and found[0] is db:
                return found[1]
            store = SqlEvolutionStore(db)
            await store.migrate()
            self._stores[id(db)] = (db, store)
            return store
