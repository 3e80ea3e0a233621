"""The vector store: Milvus (a server, or milvus-lite in a local file) or an in-process index.

pymilvus' client is synchronous, so every Milvus call runs in a worker thread and never
blocks the event loop. Filters are equality maps on scalar fields (`{"tenant": "acme"}`)
so the two implementations agree on meaning, and values are quoted safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from strata_runtime.config import VectorStoreConfig
from strata_runtime.stores.health import BackendHealth, recover_forever

log = logging.getLogger("strata.stores")

Scalar = str | int | float | bool


@dataclass(frozen=True)
class VectorRow:
    id: str
    vector: Sequence[float]
    fields: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class VectorHit:
    id: str
    score: float
    fields: Mapping[str, Scalar]


class VectorIndex(Protocol):
    kind: str

    async def ensure_collection(self, name: str, dimension: int) -> None: ...
    async def upsert(self, collection: str, rows: Sequence[VectorRow]) -> None: ...
    async def search(
        self, collection: str, vector: Sequence[float], *, where: Mapping[str, Scalar], limit: int
    ) -> list[VectorHit]: ...
    async def count(self, collection: str, *, where: Mapping[str, Scalar]) -> int: ...
    async def delete(self, collection: str, *, where: Mapping[str, Scalar]) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


def milvus_filter(where: Mapping[str, Scalar]) -> str:
    parts = []
    for key, value in sorted(where.items()):
        if not key.isidentifier():
            raise ValueError(f"invalid filter field {key!r}")
        if isinstance(value, str):
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{key} == "{escaped}"')
        elif isinstance(value, bool):
            parts.append(f"{key} == {str(value).lower()}")
        else:
            parts.append(f"{key} == {value}")
    return " and ".join(parts)


class MilvusIndex:
    """Cosine similarity on normalised vectors; `fields` live in Milvus' dynamic field."""

    kind = "milvus"

    def __init__(self, uri: str, token: str | None = None, timeout: float = 10.0):
        self.uri = uri
        self._token = token
        self._timeout = timeout
        self._client: Any = None
        self._known: set[str] = set()
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        from pymilvus import MilvusClient

        if self.uri.endswith(".db"):
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"uri": self.uri, "timeout": self._timeout}
        if self._token:
            kwargs["token"] = self._token
        self._client = await asyncio.to_thread(MilvusClient, **kwargs)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            await self.connect()
        return await asyncio.to_thread(getattr(self._client, method), *args, **kwargs)

    async def ensure_collection(self, name: str, dimension: int) -> None:
        if name in self._known:
            return
        async with self._lock:
            if name in self._known:
                return
            if not await self._call("has_collection", name):
                await self._call(
                    "create_collection",
                    collection_name=name,
                    dimension=dimension,
                    primary_field_name="id",
                    id_type="string",
                    max_length=256,
                    vector_field_name="vector",
                    metric_type="COSINE",
                    auto_id=False,
                    enable_dynamic_field=True,
                )
            self._known.add(name)

    async def upsert(self, collection: str, rows: Sequence[VectorRow]) -> None:
        if not rows:
            return
        data = [{"id": r.id, "vector": list(map(float, r.vector)), **r.fields} for r in rows]
        await self._call("upsert", collection_name=collection, data=data)

    async def search(
        self, collection: str, vector: Sequence[float], *, where: Mapping[str, Scalar], limit: int
    ) -> list[VectorHit]:
        result = await self._call(
            "search",
            collection_name=collection,
            data=[list(map(float, vector))],
            filter=milvus_filter(where),
            limit=limit,
            output_fields=["*"],
        )
        hits = []
        for hit in result[0] if result else []:
            entity = dict(hit.get("entity", {}))
            entity.pop("vector", None)
            entity.pop("id", None)
            hits.append(VectorHit(id=str(hit["id"]), score=float(hit["distance"]), fields=entity))
        return hits

    async def count(self, collection: str, *, where: Mapping[str, Scalar]) -> int:
        rows = await self._call(
            "query", collection_name=collection, filter=milvus_filter(where) or 'id != ""', output_fields=["id"]
        )
        return len(rows)

    async def delete(self, collection: str, *, where: Mapping[str, Scalar]) -> None:
        await self._call("delete", collection_name=collection, filter=milvus_filter(where) or 'id != ""')

    async def ping(self) -> None:
        await self._call("list_collections")

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._client.close)
            self._client = None


class MemoryVectorIndex:
    """Exact cosine search with numpy; the embedded default and the fallback."""

    kind = "memory"

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, VectorRow]] = {}
        self._dimensions: dict[str, int] = {}

    async def ensure_collection(self, name: str, dimension: int) -> None:
        self._rows.setdefault(name, {})
        self._dimensions.setdefault(name, dimension)

    async def upsert(self, collection: str, rows: Sequence[VectorRow]) -> None:
        table = self._rows.setdefault(collection, {})
        for row in rows:
            vec = np.asarray(row.vector, dtype=np.float32)
            norm = float(np.linalg.norm(vec)) or 1.0
            table[row.id] = VectorRow(row.id, (vec / norm).tolist(), dict(row.fields))

    def _matching(self, collection: str, where: Mapping[str, Scalar]) -> list[VectorRow]:
        return [
            r for r in self._rows.get(collection, {}).values() if all(r.fields.get(k) == v for k, v in where.items())
        ]

    async def search(
        self, collection: str, vector: Sequence[float], *, where: Mapping[str, Scalar], limit: int
    ) -> list[VectorHit]:
        rows = self._matching(collection, where)
        if not rows:
            return []
        query = np.asarray(vector, dtype=np.float32)
        query = query / (float(np.linalg.norm(query)) or 1.0)
        scores = np.stack([np.asarray(r.vector) for r in rows]) @ query
        order = np.argsort(-scores)[:limit]
        return [VectorHit(rows[i].id, float(scores[i]), rows[i].fields) for i in order]

    async def count(self, collection: str, *, where: Mapping[str, Scalar]) -> int:
        return len(self._matching(collection, where))

    async def delete(self, collection: str, *, where: Mapping[str, Scalar]) -> None:
        for row in self._matching(collection, where):
            del self._rows[collection][row.id]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._rows.clear()


class VectorConnector:
    def __init__(self, config: VectorStoreConfig, env: Mapping[str, str]):
        self.config = config
        self.uri = (env.get(config.uri_env) if config.uri_env else None) or config.uri
        token = env.get(config.token_env) if config.token_env else None
        self.wants_milvus = config.backend != "memory"
        self.health = BackendHealth(
            name="vectors",
            kind=("milvus-lite" if self.uri.endswith(".db") else "milvus") if self.wants_milvus else "memory",
            required=config.backend == "milvus",
        )
        self._milvus = MilvusIndex(self.uri, token, config.connect_timeout_seconds) if self.wants_milvus else None
        self._memory = MemoryVectorIndex()
        self._recovery: asyncio.Task[None] | None = None
        if not self.wants_milvus:
            self.health.mark_ok()

    @property
    def index(self) -> VectorIndex:
        if self._milvus is not None and self.health.state == "ok":
            return self._milvus
        return self._memory

    async def start(self) -> None:
        if self._milvus is None:
            return
        try:
            await asyncio.wait_for(self._milvus.ping(), timeout=self.config.connect_timeout_seconds * 3)
        except Exception as e:
            self.health.mark_failed(e)
        else:
            self.health.mark_ok()
        self._recovery = asyncio.create_task(
            recover_forever(self.health, self._milvus.ping, 10.0), name="vectors-recovery"
        )

    async def ping(self) -> None:
        await self.index.ping()

    def report_failure(self, error: BaseException) -> None:
        if self._milvus is not None:
            self.health.mark_failed(error)

    async def close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        if self._milvus is not None:
            await self._milvus.close()
        await self._memory.close()
