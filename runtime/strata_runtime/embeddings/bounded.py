"""A bounded work queue in front of the embedder for `/v1/embeddings` requests.

One request may carry thousands of long inputs. Handed to the embedder whole, it becomes one
forward pass over all of them (gigabytes of activations, seconds of CPU) while every other
caller waits. Here a request is cut into batches of `batch_inputs`, at most
`concurrent_batches` batches are with the embedder at once, and requests take turns batch by
batch (the semaphore is first come, first served), so a one-input request of another tenant
waits for a batch, not for a whole request. What may wait is bounded too: the inputs of all
requests queued or running (`max_queued_inputs`, refused at once beyond it) and the time one
request may take, waiting included (`deadline_seconds`).

Only `/v1/embeddings` goes through this queue; the cache, the router and memory call the
embedder directly with one or a few texts and their own deadlines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from strata_runtime.config.http import EmbeddingsLimits
from strata_runtime.embeddings.contract import Embedder, EmbedderBusy, EmbeddingUnavailable
from strata_runtime.errors import ServiceUnavailable


class EmbeddingQueueFull(ServiceUnavailable):
    """Accepting the request would put more inputs in the queue than its bound: 503, retry soon."""

    code = "embedder_busy"

    def __init__(self, queued: int, wanted: int, limit: int):
        super().__init__(f"the embedder has {queued} inputs queued and {wanted} more would exceed its bound "
                         f"of {limit}; retry shortly or send fewer inputs",
                         details={"queued_inputs": queued, "limit": limit})

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


def unavailable_error(error: EmbeddingUnavailable) -> ServiceUnavailable:
    """The 503 for a caller that cannot skip its semantic step: `embedder_busy` (Retry-After)
    when the embedder's own queue is full, `unavailable` when it failed or missed its deadline."""
    if isinstance(error, EmbedderBusy):
        return EmbeddingQueueFull(error.queued, error.wanted, error.limit)
    return ServiceUnavailable(f"embedder unavailable: {error}")


class EmbeddingDeadline(ServiceUnavailable):
    """The request did not finish within its deadline (waiting for the embedder included)."""

    code = "embedder_deadline"


class EmbeddingQueue:
    def __init__(self, embedder: Embedder, limits: EmbeddingsLimits):
        self.embedder = embedder
        self.limits = limits
        self._turns = asyncio.Semaphore(limits.concurrent_batches)
        self.queued_inputs = 0
        self.batches_run = 0

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        wanted = len(texts)
        if self.queued_inputs + wanted > self.limits.max_queued_inputs:
            raise EmbeddingQueueFull(self.queued_inputs, wanted, self.limits.max_queued_inputs)
        self.queued_inputs += wanted
        left = wanted
        parts: list[npt.NDArray[np.float32]] = []
        try:
            async with asyncio.timeout(self.limits.deadline_seconds):
                step = self.limits.batch_inputs
                for start in range(0, wanted, step):
                    batch = texts[start:start + step]
                    async with self._turns:
                        parts.append(await self.embedder.embed(batch))
                    self.batches_run += 1
                    left -= len(batch)
                    self.queued_inputs -= len(batch)
        except TimeoutError:
            raise EmbeddingDeadline(f"embedding {wanted} inputs took longer than the "
                                    f"{self.limits.deadline_seconds:g}s deadline") from None
        finally:
            self.queued_inputs -= left
        if not parts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        return np.concatenate(parts, axis=0)
