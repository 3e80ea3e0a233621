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
import numpy.typing as npt

from strata_runtime.config import VectorStoreConfig
from strata_runtime.stores.health import BackendHealth, StoreUnavailable

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


class MilvusNotReady(Exception):
    """Milvus answers but a collection in use is not loaded (yet)."""


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
        """Milvus answers and every collection this runtime uses is loaded. A restarted Milvus
        answers well before it has reloaded its collections (searches fail until then), so
        answering alone would flap readiness between ok and down until the reload ends."""
        await self._call("list_collections")
        for name in sorted(self._known):
            state = str((await self._call("get_load_state", collection_name=name)).get("state"))
            if state == "NotExist":  # dropped behind our back: ensure_collection creates it again
                self._known.discard(name)
            elif state != "Loaded":
                raise MilvusNotReady(f"Milvus collection {name} is not loaded yet ({state})")

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._client.close)
            self._client = None


class _MemoryCollection:
    """One collection: a pre-normalised float32 matrix, plus postings `(field, value) -> row
    positions` so a filtered search never scans rows in Python.

    Bounded: at most `max_rows` live rows; writing one more drops the row written least recently
    (an upsert of an existing id counts as a write). Slots of dropped and deleted rows are reused
    before the matrix grows, and a posting left empty is removed with its key (a key holds a
    field value, e.g. a row's whole content), so deletes and evictions give their memory back."""

    def __init__(self, dimension: int, max_rows: int):
        self.dimension = dimension
        self.max_rows = max_rows
        self.matrix = np.zeros((min(64, max_rows), dimension), dtype=np.float32)
        self.size = 0  # slots ever used (live or free)
        self.alive = np.zeros(len(self.matrix), dtype=bool)
        self.ids: list[str] = []
        self.fields: list[Mapping[str, Scalar]] = []
        self.position: dict[str, int] = {}  # live rows, least recently written first
        self.free: list[int] = []
        self.postings: dict[tuple[str, Scalar], set[int]] = {}
        # Filters repeat (one tenant/agent scope per caller): reuse their row arrays until a write.
        self._version = 0
        self._matches: dict[frozenset[tuple[str, Scalar]], tuple[int, npt.NDArray[np.intp]]] = {}

    def __len__(self) -> int:
        return len(self.position)

    def upsert(self, row: VectorRow) -> None:
        vector = np.asarray(row.vector, dtype=np.float32)
        if vector.shape != (self.dimension,):
            raise ValueError(f"vector has dimension {vector.shape}, collection has {self.dimension}")
        vector = vector / (float(np.linalg.norm(vector)) or 1.0)
        self._version += 1
        pos = self.position.pop(row.id, None)
        if pos is None:
            while len(self.position) >= self.max_rows:
                self._drop(self.position.pop(next(iter(self.position))))
            pos = self._slot()
        else:
            self._unpost(pos)
        self.position[row.id] = pos
        self.ids[pos] = row.id
        self.matrix[pos] = vector
        self.alive[pos] = True
        self.fields[pos] = dict(row.fields)
        for item in self.fields[pos].items():
            self.postings.setdefault(item, set()).add(pos)

    def _slot(self) -> int:
        if self.free:
            return self.free.pop()
        if self.size == len(self.matrix):
            grown = min(2 * len(self.matrix), self.max_rows) - len(self.matrix)
            self.matrix = np.concatenate([self.matrix, np.zeros((grown, self.dimension), dtype=np.float32)])
            self.alive = np.concatenate([self.alive, np.zeros(grown, dtype=bool)])
        pos = self.size
        self.size += 1
        self.ids.append("")
        self.fields.append({})
        return pos

    def _drop(self, pos: int) -> None:
        """Free the slot of a row already removed from `position`."""
        self._unpost(pos)
        self.alive[pos] = False
        self.fields[pos] = {}
        self.ids[pos] = ""
        self.free.append(pos)

    def _unpost(self, pos: int) -> None:
        for item in self.fields[pos].items():
            posting = self.postings.get(item)
            if posting is not None:
                posting.discard(pos)
                if not posting:
                    del self.postings[item]

    def matching(self, where: Mapping[str, Scalar]) -> npt.NDArray[np.intp]:
        key = frozenset(where.items())
        cached = self._matches.get(key)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        if not where:
            rows = np.flatnonzero(self.alive[: self.size])
        else:
            lists = sorted((self.postings.get(item, set()) for item in where.items()), key=len)
            found = set(lists[0]).intersection(*lists[1:])
            rows = np.fromiter(sorted(found), dtype=np.intp, count=len(found))
        if len(self._matches) > 1024:
            self._matches.clear()
        self._matches[key] = (self._version, rows)
        return rows

    def search(self, query: npt.NDArray[np.float32], where: Mapping[str, Scalar], limit: int) -> list[VectorHit]:
        candidates = self.matching(where)
        if candidates.size == 0:
            return []
        if candidates.size * 4 >= self.size:
            # Scoring every row and picking the candidates beats copying most of the matrix.
            scores = (self.matrix[: self.size] @ query)[candidates]
        else:
            scores = self.matrix[candidates] @ query
        k = min(limit, scores.size)
        top = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
        top = top[np.argsort(-scores[top])]
        return [VectorHit(self.ids[candidates[i]], float(scores[i]), self.fields[candidates[i]]) for i in top]

    def delete(self, where: Mapping[str, Scalar]) -> None:
        self._version += 1
        for pos in self.matching(where).tolist():
            del self.position[self.ids[pos]]
            self._drop(pos)


class MemoryVectorIndex:
    """Exact cosine search with numpy; the embedded default and the fallback. At most
    `max_rows` rows per collection (the least recently written go first), since every row
    lives in the process."""

    kind = "memory"

    def __init__(self, max_rows: int = 10_000) -> None:
        self.max_rows = max_rows
        self._collections: dict[str, _MemoryCollection] = {}

    async def ensure_collection(self, name: str, dimension: int) -> None:
        self._collection(name, dimension)

    def _collection(self, name: str, dimension: int | None = None) -> _MemoryCollection | None:
        if name not in self._collections and dimension is not None:
            self._collections[name] = _MemoryCollection(dimension, self.max_rows)
        return self._collections.get(name)

    async def upsert(self, collection: str, rows: Sequence[VectorRow]) -> None:
        if not rows:
            return
        table = self._collection(collection, len(rows[0].vector))
        assert table is not None
        for row in rows:
            table.upsert(row)

    async def search(
        self, collection: str, vector: Sequence[float], *, where: Mapping[str, Scalar], limit: int
    ) -> list[VectorHit]:
        table = self._collection(collection)
        if table is None or limit < 1:
            return []
        query = np.asarray(vector, dtype=np.float32)
        return table.search(query / (float(np.linalg.norm(query)) or 1.0), where, limit)

    async def count(self, collection: str, *, where: Mapping[str, Scalar]) -> int:
        table = self._collection(collection)
        return 0 if table is None else int(table.matching(where).size)

    async def delete(self, collection: str, *, where: Mapping[str, Scalar]) -> None:
        table = self._collection(collection)
        if table is not None:
            table.delete(where)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._collections.clear()


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
        self._memory = MemoryVectorIndex(config.memory_max_rows)
        if not self.wants_milvus:
            self.health.mark_ok()

    @property
    def index(self) -> VectorIndex:
        """Milvus while it answers; the in-process index when `auto` degraded. With `milvus`
        (required) and Milvus unreachable: StoreUnavailable, never a pod-local write that would
        be acknowledged and then never reach Milvus."""
        if self._milvus is not None and self.health.state == "ok":
            return self._milvus
        if self._milvus is not None and self.health.required:
            raise self.unavailable()
        return self._memory

    def unavailable(self) -> StoreUnavailable:
        return StoreUnavailable("vector store (Milvus) unreachable; retry shortly",
                                retry_after_seconds=self.config.recover_interval_seconds)

    def failed(self, error: Exception) -> Exception:
        """Record a failed Milvus call; what to raise instead (503 with Retry-After for a
        required Milvus, the error itself otherwise)."""
        if self._milvus is None:
            return error
        self.health.mark_failed(error)
        return self.unavailable() if self.health.required else error

    async def start(self) -> None:
        if self._milvus is None:
            return
        milvus = self._milvus

        async def ping_within_deadline() -> None:
            # milvus-lite starts a server process on first use: allow it a few connect timeouts.
            await asyncio.wait_for(milvus.ping(), timeout=self.config.connect_timeout_seconds * 3)

        await self.health.probe(ping_within_deadline)
        self.health.keep_recovering(ping_within_deadline, self.config.recover_interval_seconds)

    async def ping(self) -> None:
        await (self._milvus or self._memory).ping()

    def report_failure(self, error: BaseException) -> None:
        if self._milvus is not None:
            self.health.mark_failed(error)

    async def close(self) -> None:
        await self.health.stop_recovering()
        if self._milvus is not None:
            await self._milvus.close()
        await self._memory.close()
