"""The embedded default embedder: all-MiniLM-L6-v2 in numpy, off the event loop, micro-batched.

Concurrent `embed` calls that arrive while a batch is running are merged into the next
batch (one worker thread call each), so 20 concurrent queries cost a few forward passes,
not 20. BLAS is pinned to `threads` threads: two BLAS threads per process on a shared
2-core box blow up tail latency (FIELD-NOTES).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from strata_runtime.embeddings.contract import EmbeddingUnavailable
from strata_runtime.embeddings.minilm import MiniLM

log = logging.getLogger("strata.embeddings")


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[npt.NDArray[np.float32]] = field(repr=False)


class LocalMiniLMEmbedder:
    name = "all-MiniLM-L6-v2"
    dimension = 384

    def __init__(self, *, timeout_seconds: float = 2.0, max_batch: int = 64, threads: int = 1,
                 model_dir: Path | None = None):
        self.timeout_seconds = timeout_seconds
        self.max_batch = max_batch
        self.threads = threads
        self._model_dir = model_dir
        self._model: MiniLM | None = None
        self._loading: asyncio.Task[MiniLM] | None = None
        self._queue: list[_Pending] = []
        self._worker: asyncio.Task[None] | None = None
        self.batches_run = 0

    async def start(self) -> None:
        await self._ensure_model()

    async def _ensure_model(self) -> MiniLM:
        if self._model is not None:
            return self._model
        if self._loading is None:
            self._loading = asyncio.create_task(asyncio.to_thread(self._load))
        self._model = await asyncio.shield(self._loading)
        return self._model

    def _load(self) -> MiniLM:
        from threadpoolctl import threadpool_limits

        # Process-wide: every BLAS call in this runtime (embedder and vector index) stays single-threaded.
        threadpool_limits(limits=self.threads, user_api="blas")
        return MiniLM(self._model_dir)

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        loop = asyncio.get_running_loop()
        pending = _Pending(list(texts), loop.create_future())
        # Retrieve late failures so a caller that gave up never leaves an unread exception behind.
        pending.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(pending)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="embedder-batcher")
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), self.timeout_seconds)
        except TimeoutError as e:
            raise EmbeddingUnavailable(f"local embedder missed its {self.timeout_seconds}s deadline") from e

    async def _drain(self) -> None:
        while self._queue:
            batch: list[_Pending] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].texts) <= self.max_batch):
                item = self._queue.pop(0)
                batch.append(item)
                size += len(item.texts)
            texts = [t for item in batch for t in item.texts]
            try:
                model = await self._ensure_model()
                vectors = await asyncio.to_thread(model.encode, texts)
            except Exception as e:
                log.warning("local embedder failed", extra={"error": type(e).__name__})
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(EmbeddingUnavailable(f"local embedder failed: {e}"))
                continue
            self.batches_run += 1
            offset = 0
            for item in batch:
                n = len(item.texts)
                if not item.future.done():
                    item.future.set_result(vectors[offset:offset + n])
                offset += n

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(EmbeddingUnavailable("embedder closed"))
        self._queue.clear()
