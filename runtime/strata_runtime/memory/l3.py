"""L3: long-term memories (archived conversation summaries, kb/task/event items) in the vector store.

Rows are keyed by a deterministic id and written with ``upsert``: Milvus ``insert`` does not
deduplicate primary keys, so a retried or duplicated archive would otherwise leave two rows.
Every row carries its scope (tenant, agent, channel) and searches always filter on it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from strata_runtime.embeddings.contract import Embedder
from strata_runtime.stores.vectors import Scalar, VectorConnector, VectorIndex, VectorRow

Kind = Literal["conversation", "kb", "task", "event"]
KINDS: tuple[Kind, ...] = ("conversation", "kb", "task", "event")


@dataclass(frozen=True)
class Memory:
    id: str
    kind: str
    score: float
    content: str
    source: str
    timestamp: float
    session_id: str


def item_id(tenant: str, agent_id: str, channel: str, kind: str, content: str) -> str:
    """Stored items are content-addressed within their scope: storing the same text twice is one row."""
    raw = "\x1f".join((tenant, agent_id, channel, kind, content))
    return "m_" + hashlib.sha256(raw.encode()).hexdigest()[:40]


class LongTermMemory:
    """One collection per embedding dimension (``<collection>_<dim>``), so switching embedders
    never writes vectors of the wrong size into an existing collection. An embedder with a
    `vector_space` (the local models added after collections were first named: bge-small-en-v1.5
    has e5's 384 dimensions, and the two models' vectors do not compare) gets its own,
    ``<collection>_<vector_space>_<dim>``; the others keep the names their collections already have."""

    def __init__(self, vectors: VectorConnector, embedder_source: Callable[[], Embedder], collection: str):
        self.vectors = vectors
        self._embedder_source = embedder_source
        self.base_collection = collection

    @property
    def embedder(self) -> Embedder:
        return self._embedder_source()

    @property
    def collection(self) -> str:
        tag: str | None = getattr(self.embedder, "vector_space", None)
        return f"{self.base_collection}_{tag + '_' if tag else ''}{self.embedder.dimension}"

    async def _index(self) -> VectorIndex:
        index = self.vectors.index
        try:
            await index.ensure_collection(self.collection, self.embedder.dimension)
        except Exception as e:
            raise self.vectors.failed(e) from e
        return index

    async def upsert(self, *, row_id: str, tenant: str, agent_id: str, channel: str, kind: str, content: str,
                     source: str, session_id: str = "", extra: Mapping[str, Scalar] | None = None,
                     background: bool = False) -> str:
        """Embed and store one memory; `background` for writes nobody waits on (session archives)."""
        vector = (await self.embedder.embed([content], background=background))[0]
        fields: dict[str, Scalar] = {"tenant": tenant, "agent": agent_id, "channel": channel, "kind": kind,
                                     "content": content, "source": source, "session": session_id,
                                     "ts": time.time(), **(extra or {})}
        index = await self._index()
        try:
            await index.upsert(self.collection, [VectorRow(id=row_id, vector=vector.tolist(), fields=fields)])
        except Exception as e:
            raise self.vectors.failed(e) from e
        return row_id

    async def search(self, *, tenant: str, agent_id: str, query: str, limit: int, channel: str | None = None,
                     kind: str | None = None) -> list[Memory]:
        vector = (await self.embedder.embed([query]))[0]
        where: dict[str, Scalar] = {"tenant": tenant, "agent": agent_id}
        if channel:
            where["channel"] = channel
        if kind:
            where["kind"] = kind
        index = await self._index()
        try:
            hits = await index.search(self.collection, vector.tolist(), where=where, limit=limit)
        except Exception as e:
            raise self.vectors.failed(e) from e
        return [Memory(id=h.id, kind=str(h.fields.get("kind", "")), score=h.score,
                       content=str(h.fields.get("content", "")), source=str(h.fields.get("source", "")),
                       timestamp=float(h.fields.get("ts", 0.0)), session_id=str(h.fields.get("session", "")))
                for h in hits]

    async def count(self, where: Mapping[str, Scalar]) -> int:
        index = await self._index()
        try:
            return await index.count(self.collection, where=where)
        except Exception as e:
            raise self.vectors.failed(e) from e

    async def delete_session(self, tenant: str, session_id: str) -> None:
        index = await self._index()
        try:
            await index.delete(self.collection, where={"tenant": tenant, "session": session_id})
        except Exception as e:
            raise self.vectors.failed(e) from e
