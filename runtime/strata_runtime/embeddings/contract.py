"""What every embedder offers; callers treat EmbeddingUnavailable as "skip the semantic step"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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
