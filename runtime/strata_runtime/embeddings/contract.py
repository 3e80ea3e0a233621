"""What every embedder offers; callers treat EmbeddingUnavailable as "skip the semantic step"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


class EmbeddingUnavailable(Exception):
    """The embedder failed or missed its deadline; semantic features fail open."""


class EmbedderBusy(EmbeddingUnavailable):
    """The embedder's work queue is at its bound: refused at once rather than queued behind
    work that could not finish within anyone's deadline."""

    def __init__(self, queued: int, wanted: int, limit: int):
        super().__init__(f"the embedder has {queued} texts queued and {wanted} more would exceed its bound of {limit}")
        self.queued, self.wanted, self.limit = queued, wanted, limit


class Embedder(Protocol):
    name: str
    dimension: int

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> npt.NDArray[np.float32]:
        """Return an (n, dimension) float32 array of L2-normalised vectors, in input order.

        `background`: work nobody waits on (session archives): it yields to calls a request is
        waiting for, and may take longer than their deadline."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class SearchedRows(Protocol):
    """An embedder that gives a text other texts are searched against (a skill's description and
    examples) more rows than `embed` would: the composite of one model for English and another for
    the rest gives an English text a second row in the other model's dimensions, so that a query in
    any language can find it (its `embed` keeps languages apart, as the cache needs)."""

    # Where the embedder's vectors split into blocks of columns, each vector non-zero in one block
    # only (the composite: its English model's columns, then the other's); () for one block.
    blocks: tuple[int, ...]

    async def embed_searched(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
        """(rows, owners): every text's `embed` vector first, in input order, then any further rows;
        `owners[i]` is the position in `texts` of the text row i belongs to."""
        ...


def vector_blocks(embedder: Embedder) -> tuple[int, ...]:
    """The split points of the embedder's disjoint blocks of columns (SearchedRows.blocks), else ()."""
    return embedder.blocks if isinstance(embedder, SearchedRows) else ()


def rows_of_each(rows: npt.NDArray[np.float32], owners: npt.NDArray[np.intp], count: int
                 ) -> list[npt.NDArray[np.float32]]:
    """Each of `count` texts' rows, its `embed` row first, from `embed_searched`'s (rows, owners)."""
    return [rows[owners == number] for number in range(count)]


def rows_and_owners(each: Sequence[npt.NDArray[np.float32]], dimension: int
                    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
    """`embed_searched`'s (rows, owners) from each text's rows (its `embed` row first): the inverse of
    `rows_of_each`."""
    extras = [(row, number) for number, rows in enumerate(each) for row in rows[1:]]
    stacked = [rows[0] for rows in each] + [row for row, _ in extras]
    vectors = np.stack(stacked) if stacked else np.zeros((0, dimension), np.float32)
    return vectors, np.array([*range(len(each)), *(number for _, number in extras)], dtype=np.intp)


async def embed_searched(embedder: Embedder, texts: Sequence[str]
                         ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
    """The rows to search `texts` by: the embedder's own (SearchedRows), else one `embed` row per text."""
    if isinstance(embedder, SearchedRows):
        return await embedder.embed_searched(texts)
    return await embedder.embed(texts), np.arange(len(texts), dtype=np.intp)
