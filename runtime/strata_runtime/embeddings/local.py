"""The embedded local embedders, off the event loop, micro-batched.

`bge-small-en-v1.5+multilingual-e5-small` (the default: English to bge, other languages to e5, in
disjoint halves of a 768-dimensional vector, see by_language.py), `multilingual-e5-small` (Chinese,
English and ~90 more languages, 4-bit, see e5.py), `bge-small-en-v1.5` (English only, int8, see
bge.py; its weights are fetched at build time) or `all-MiniLM-L6-v2` (English only, numpy, see
minilm.py). LOCAL_MODELS is the registry: names, aliases, dimensions, loaders.

The model runs in one thread of its own, one batch at a time. An idle embedder hands a call's
texts to that thread in the call itself (no batcher task in between), and the thread hands the
vectors back with one wake-up of the event loop. Concurrent `embed` calls that arrive while a
batch is running are merged into the next batch (one encode each), so 20 concurrent queries
cost a few forward passes, not 20. BLAS is pinned to `threads` threads: two BLAS threads per
process on a shared 2-core box blow up tail latency.

Calls a request waits for go ahead of background work (`background=True`: session archives,
which nobody waits on): under load a cache lookup or a memory call waits at most for the batch
already running, not behind an archive backlog; background work gets a longer deadline of its own
(BACKGROUND_DEADLINE_SECONDS) instead of failing and retrying while the foreground is busy.

The queue is bounded: while texts are waiting, a call that would take the waiting texts above
`max_queued_texts` is refused at once (EmbedderBusy; `/v1/embeddings` answers 503
`embedder_busy`, the cache, the router and memory recall skip their semantic step). A caller
that gives up (its deadline passed, its task was cancelled) takes its texts out of the queue:
nothing is computed for a caller that is no longer waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from strata_runtime.embeddings import bge, by_language, e5
from strata_runtime.embeddings.bge import BgeSmallEn
from strata_runtime.embeddings.by_language import ByLanguage
from strata_runtime.embeddings.contract import EmbedderBusy, EmbeddingUnavailable
from strata_runtime.embeddings.e5 import NAME as E5_NAME
from strata_runtime.embeddings.e5 import E5Small
from strata_runtime.embeddings.minilm import MiniLM

# About two seconds of work (the default deadline) for e5-small on one core, with headroom.
MAX_QUEUED_TEXTS = 512
BACKGROUND_DEADLINE_SECONDS = 30.0
Model = MiniLM | E5Small | BgeSmallEn | ByLanguage


@dataclass(frozen=True)
class LocalModel:
    name: str
    aliases: tuple[str, ...]
    dimension: int
    vectors_key: str  # the identity of its vectors (model + engine): what caches of vectors are keyed by
    load: Callable[[int, Path | None], Model] = field(repr=False)  # (threads, MiniLM's model_dir)
    # Names this model's vectors where stores keep vectors of more than one embedder apart: long-term
    # memory's collection (memory/l3.py) and the cache's Redis partitions (cache/redis_store.py).
    # None: the names those stores had before there were two local models of one dimension.
    vector_space: str | None = None
    blocks: tuple[int, ...] = ()  # split points of disjoint column blocks (embeddings.contract.SearchedRows)


def _by_language(threads: int, _: Path | None) -> ByLanguage:
    bge.weight_files()  # missing bge weights: an error at start-up, not at the first English text
    return ByLanguage(lambda: BgeSmallEn(threads=threads), lambda: E5Small(threads=threads))


MODELS = (
    LocalModel(E5_NAME, ("intfloat/multilingual-e5-small",), e5.DIMENSION, e5.VECTORS_KEY,
               lambda threads, _: E5Small(threads=threads)),
    LocalModel(bge.NAME, ("BAAI/bge-small-en-v1.5",), bge.DIMENSION, bge.VECTORS_KEY,
               lambda threads, _: BgeSmallEn(threads=threads), vector_space="bge_small_en"),
    LocalModel(by_language.NAME, (), by_language.DIMENSION, by_language.VECTORS_KEY, _by_language,
               vector_space="bge_small_en_e5_small", blocks=(bge.DIMENSION,)),
    LocalModel("all-MiniLM-L6-v2", ("sentence-transformers/all-MiniLM-L6-v2",), 384, "all-MiniLM-L6-v2",
               lambda _, model_dir: MiniLM(model_dir)),
)
LOCAL_MODEL = {alias: m for m in MODELS for alias in (m.name, *m.aliases)}
LOCAL_MODELS = tuple(LOCAL_MODEL)
MINILM_NAMES = (MODELS[-1].name, *MODELS[-1].aliases)
E5_NAMES = (MODELS[0].name, *MODELS[0].aliases)

log = logging.getLogger("strata.embeddings")


@dataclass(eq=False)
class _Pending:
    texts: list[str]
    background: bool
    future: asyncio.Future[npt.NDArray[np.float32]] = field(repr=False)
    other_side: bool = False  # the composite's other-languages rows (ByLanguage.encode_other_side)


class _EncodeThread:
    """The one thread the model runs in, fed jobs one at a time.

    Not a ThreadPoolExecutor: its worker settles a future of its own (a lock, a notify, callbacks)
    after each job while the event loop, just woken by the job, waits for the GIL; this thread
    goes straight back to its queue (measured ~40 us less from the end of an encode to the caller
    resuming). Not a daemon either: a daemon thread still inside ONNX Runtime when the interpreter
    exits is torn down mid-call. Once the main thread has finished it lets the interpreter exit
    within a second (after the job in hand), as the executor's threads do, `stop` or not.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="embedder")
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        """The thread ends after the job in hand (if any); a job submitted later is not run."""
        self._jobs.put(None)

    def _run(self) -> None:
        main = threading.main_thread()
        while True:
            try:
                job = self._jobs.get(timeout=1.0)
            except queue.Empty:
                if main.is_alive():
                    continue
                return
            if job is None:
                return
            job()


def _retrieve(future: asyncio.Future[npt.NDArray[np.float32]]) -> None:
    """A caller that gave up never leaves an unread exception behind."""
    if not future.cancelled():
        future.exception()


class LocalEmbedder:
    def __init__(self, *, model: str = E5_NAME, timeout_seconds: float = 2.0, max_batch: int = 64,
                 threads: int = 1, model_dir: Path | None = None, max_queued_texts: int = MAX_QUEUED_TEXTS):
        if model not in LOCAL_MODEL:
            raise ValueError(f"no local embedding model {model!r}; choose one of {', '.join(LOCAL_MODELS)}")
        self.model = LOCAL_MODEL[model]
        self.name = self.model.name
        self.dimension = self.model.dimension
        self.vector_space = self.model.vector_space
        self.blocks = self.model.blocks
        self.timeout_seconds = timeout_seconds
        self.max_batch = max_batch
        self.threads = threads
        self._model_dir = model_dir
        self._model: Model | None = None
        self._loading: asyncio.Task[Model] | None = None
        self.max_queued_texts = max_queued_texts
        self._queue: list[_Pending] = []
        self._queued_texts = 0
        # The batch in the worker thread (at most one), the thread, and the task waiting for the model.
        self._running: list[_Pending] | None = None
        self._thread: _EncodeThread | None = None
        self._waiting_for_model: asyncio.Task[None] | None = None
        self.batches_run = 0

    async def start(self) -> None:
        model = await self._ensure_model()
        if isinstance(model, ByLanguage):  # each engine loads on first need; a request should not wait for it
            await asyncio.to_thread(model.warm)

    async def _ensure_model(self) -> Model:
        if self._model is not None:
            return self._model
        if self._loading is None:
            self._loading = asyncio.create_task(asyncio.to_thread(self._load))
        self._model = await asyncio.shield(self._loading)
        return self._model

    def _load(self) -> Model:
        from threadpoolctl import threadpool_limits

        # Process-wide: every BLAS call in this runtime (embedder and vector index) stays single-threaded.
        threadpool_limits(limits=self.threads, user_api="blas")
        return self.model.load(self.threads, self._model_dir)

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> npt.NDArray[np.float32]:
        return await self._embed(texts, background=background, other_side=False)

    async def embed_searched(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
        """SearchedRows: the composite gives each English text a second row in e5's half."""
        vectors = await self.embed(texts)
        owners = np.arange(len(texts), dtype=np.intp)
        if not isinstance(self._model, ByLanguage):
            return vectors, owners
        english = np.fromiter((by_language.is_english(t) for t in texts), dtype=bool, count=len(texts))
        if not english.any():
            return vectors, owners
        others = np.flatnonzero(english)
        extra = await self._embed([texts[int(i)] for i in others], background=False, other_side=True)
        return np.concatenate([vectors, extra]), np.concatenate([owners, others.astype(np.intp)])

    async def _embed(self, texts: Sequence[str], *, background: bool, other_side: bool) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        wanted = len(texts)
        if self._queued_texts and self._queued_texts + wanted > self.max_queued_texts:
            raise EmbedderBusy(self._queued_texts, wanted, self.max_queued_texts)
        pending = _Pending(list(texts), background, asyncio.get_running_loop().create_future(), other_side)
        pending.future.add_done_callback(_retrieve)
        self._enqueue(pending)
        deadline = max(self.timeout_seconds, BACKGROUND_DEADLINE_SECONDS) if background else self.timeout_seconds
        try:
            # The future itself, not a shield in wait_for: each layer costs an event-loop turn on the
            # way back, and a caller that stops waiting cancels its future anyway (_abandon).
            async with asyncio.timeout(deadline):
                return await pending.future
        except TimeoutError as e:
            raise EmbeddingUnavailable(f"local embedder missed its {deadline}s deadline") from e
        finally:
            self._abandon(pending)

    def _enqueue(self, pending: _Pending) -> None:
        """Background work at the end; a waited-for call ahead of every background one."""
        at = len(self._queue)
        if not pending.background:
            at = next((i for i, queued in enumerate(self._queue) if queued.background), at)
        self._queue.insert(at, pending)
        self._queued_texts += len(pending.texts)
        self._next_batch()

    @property
    def queued_texts(self) -> int:
        """Texts waiting for a batch (not those being computed)."""
        return self._queued_texts

    def _abandon(self, pending: _Pending) -> None:
        """The caller has its vectors or stopped waiting: texts not yet taken leave the queue."""
        if not pending.future.done():
            pending.future.cancel()
        if pending in self._queue:
            self._queue.remove(pending)
            self._queued_texts -= len(pending.texts)

    def _next_batch(self) -> None:
        """On the event loop, whenever a call arrives or a batch ends: if the worker thread is idle,
        hand it everything queued (up to `max_batch` texts) at once.

        No batcher task sits between a caller and the thread: an idle embedder starts encoding in
        the call that asked, and the thread hands the vectors back with one wake-up of the loop
        (`_finish`), which resolves the callers' futures and starts the next batch. While a batch
        runs, callers queue, and the next batch takes them all: concurrent calls still share
        forward passes.
        """
        if self._running is not None or not self._queue:
            return
        model = self._model
        if model is None:
            if self._waiting_for_model is None or self._waiting_for_model.done():
                self._waiting_for_model = asyncio.create_task(self._load_then_run(), name="embedder-load")
            return
        batch: list[_Pending] = []
        size = 0
        side = self._queue[0].other_side  # a batch is encoded by one function: calls of one side
        while self._queue and self._queue[0].other_side == side and (
                not batch or size + len(self._queue[0].texts) <= self.max_batch):
            item = self._queue.pop(0)
            self._queued_texts -= len(item.texts)
            batch.append(item)
            size += len(item.texts)
        if self._thread is None:
            self._thread = _EncodeThread()
        self._running = batch
        texts = [t for item in batch for t in item.texts]
        loop = asyncio.get_running_loop()
        encode = model.encode_other_side if side and isinstance(model, ByLanguage) else model.encode
        self._thread.submit(lambda: self._encode(loop, encode, batch, texts))

    def _encode(self, loop: asyncio.AbstractEventLoop, encode: Callable[[list[str]], npt.NDArray[np.float32]],
                batch: list[_Pending], texts: list[str]) -> None:
        """In the worker thread: the forward passes, then one call back onto the loop with the outcome."""
        vectors: npt.NDArray[np.float32] | None = None
        error: BaseException | None = None
        try:
            vectors = encode(texts)
        except BaseException as e:  # handed to the callers; the thread itself carries on
            error = e
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(self._finish, batch, vectors, error)

    def _finish(self, batch: list[_Pending], vectors: npt.NDArray[np.float32] | None,
                error: BaseException | None) -> None:
        if self._running is batch:
            self._running = None
        if vectors is None:
            log.warning("local embedder failed", extra={"error": type(error).__name__})
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(EmbeddingUnavailable(f"local embedder failed: {error}"))
        else:
            self.batches_run += 1
            offset = 0
            for item in batch:
                n = len(item.texts)
                if not item.future.done():
                    item.future.set_result(vectors[offset:offset + n])
                offset += n
        self._next_batch()

    async def _load_then_run(self) -> None:
        try:
            await self._ensure_model()
        except Exception as e:
            log.warning("local embedder failed", extra={"error": type(e).__name__})
            self._fail_queued(EmbeddingUnavailable(f"local embedder failed: {e}"))
            return
        self._next_batch()

    def _fail_queued(self, error: EmbeddingUnavailable) -> None:
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(error)
        self._queue.clear()
        self._queued_texts = 0

    async def close(self) -> None:
        if self._waiting_for_model is not None and not self._waiting_for_model.done():
            self._waiting_for_model.cancel()
        self._fail_queued(EmbeddingUnavailable("embedder closed"))
        running, self._running = self._running, None
        for item in running or ():
            if not item.future.done():
                item.future.set_exception(EmbeddingUnavailable("embedder closed"))
        if self._thread is not None:
            # The batch in the thread (if any) finishes there; its outcome finds every caller answered.
            self._thread.stop()
            self._thread = None


class LocalMiniLMEmbedder(LocalEmbedder):
    """all-MiniLM-L6-v2 (English only), kept for configurations that name it."""

    def __init__(self, *, timeout_seconds: float = 2.0, max_batch: int = 64, threads: int = 1,
                 model_dir: Path | None = None, max_queued_texts: int = MAX_QUEUED_TEXTS):
        super().__init__(model=MINILM_NAMES[0], timeout_seconds=timeout_seconds, max_batch=max_batch,
                         threads=threads, model_dir=model_dir, max_queued_texts=max_queued_texts)
