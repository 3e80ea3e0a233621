"""The local embedder's work queue: bounded, and nothing computed for a caller that gave up.

The model is replaced by a gate-controlled stand-in (the queue logic is what is tested; the
real models are tested in test_embeddings.py): it records the texts it was given and blocks
until the test opens the gate, so "a batch is running" is a state the test controls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from strata_runtime.embeddings import EmbedderBusy, EmbeddingUnavailable, LocalEmbedder
from strata_runtime.embeddings.bounded import EmbeddingQueueFull, unavailable_error

pytestmark = pytest.mark.unit


class GatedModel:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.started.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self.encoded.extend(texts)
        return np.ones((len(texts), 384), dtype=np.float32)


def _embedder(model: GatedModel, *, timeout: float = 30.0, limit: int = 8) -> LocalEmbedder:
    embedder = LocalEmbedder(timeout_seconds=timeout, max_queued_texts=limit)
    embedder._model = cast(Any, model)
    return embedder


async def _running(model: GatedModel) -> None:
    assert await asyncio.to_thread(model.started.wait, 30), "the first batch never started"


async def test_texts_beyond_the_bound_are_refused_at_once_while_others_wait() -> None:
    model = GatedModel()
    embedder = _embedder(model, limit=8)
    first = asyncio.create_task(embedder.embed(["running"]))
    await _running(model)
    waiting = asyncio.create_task(embedder.embed([f"queued {i}" for i in range(6)]))
    await asyncio.sleep(0)
    assert embedder.queued_texts == 6
    with pytest.raises(EmbedderBusy) as busy:
        await embedder.embed(["one", "two", "three"])
    assert (busy.value.queued, busy.value.wanted, busy.value.limit) == (6, 3, 8)
    assert isinstance(busy.value, EmbeddingUnavailable), "callers that fail open keep doing so"
    fits = asyncio.create_task(embedder.embed(["fits", "too"]))
    model.gate.set()
    assert len(await first) == 1 and len(await waiting) == 6 and len(await fits) == 2
    assert "one" not in model.encoded and embedder.queued_texts == 0
    await embedder.close()


async def test_one_call_larger_than_the_bound_is_served_when_nothing_waits() -> None:
    model = GatedModel()
    model.gate.set()
    embedder = _embedder(model, limit=4)
    assert (await embedder.embed([f"t{i}" for i in range(10)])).shape == (10, 384)
    await embedder.close()


async def test_callers_that_gave_up_are_never_computed() -> None:
    model = GatedModel()
    embedder = _embedder(model, timeout=0.3, limit=100)
    first = asyncio.create_task(embedder.embed(["running"]))
    await _running(model)
    with pytest.raises(EmbeddingUnavailable):
        await embedder.embed(["deadline passed while queued"])
    cancelled = asyncio.create_task(embedder.embed(["caller cancelled"]))
    await asyncio.sleep(0)
    assert embedder.queued_texts == 1
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert embedder.queued_texts == 0
    model.gate.set()
    with pytest.raises(EmbeddingUnavailable):  # its own 0.3 s deadline passed while the gate was shut
        await first
    embedder.timeout_seconds = 30
    assert len(await embedder.embed(["after"])) == 1
    assert model.encoded == ["running", "after"]
    await embedder.close()


async def test_waited_for_calls_go_ahead_of_background_work_which_waits_longer() -> None:
    model = GatedModel()
    embedder = _embedder(model, timeout=0.3, limit=100)
    embedder.max_batch = 1  # one call per batch: the order of the batches is the order of the queue
    first = asyncio.create_task(embedder.embed(["running"]))
    await _running(model)
    archives = [asyncio.create_task(embedder.embed([f"archive {i}"], background=True)) for i in range(2)]
    await asyncio.sleep(0)
    lookup = asyncio.create_task(embedder.embed(["lookup"]))
    await asyncio.sleep(0.5)  # past the foreground deadline (0.3 s), not the background one
    assert lookup.done() and isinstance(lookup.exception(), EmbeddingUnavailable)
    assert not any(a.done() for a in archives), "background work keeps waiting past the foreground deadline"
    embedder.timeout_seconds = 30
    late = asyncio.create_task(embedder.embed(["late lookup"]))
    await asyncio.sleep(0)
    model.gate.set()
    await asyncio.gather(first, late, *archives, return_exceptions=True)
    assert [len(await a) for a in archives] == [1, 1]
    assert model.encoded == ["running", "late lookup", "archive 0", "archive 1"]
    await embedder.close()


def test_a_busy_embedder_is_a_503_embedder_busy_with_retry_after() -> None:
    error = unavailable_error(EmbedderBusy(600, 10, 512))
    assert isinstance(error, EmbeddingQueueFull)
    assert (error.status, error.code, error.headers()) == (503, "embedder_busy", {"Retry-After": "1"})
    other = unavailable_error(EmbeddingUnavailable("missed its deadline"))
    assert (other.status, other.code) == (503, "unavailable")


class TextModel:
    """Each text's vector names the text (its hash picks the one non-zero column), so a caller that
    got another caller's vector shows; the calls (batches) and the threads they ran in are recorded."""

    def __init__(self, gate: threading.Event | None = None, fail_on: str | None = None) -> None:
        self.gate = gate
        self.started = threading.Event()
        self.fail_on = fail_on
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.started.set()
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        self.calls.append(list(texts))
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("the model failed")
        return np.stack([vector_of(t) for t in texts])


def vector_of(text: str) -> npt.NDArray[np.float32]:
    vector = np.zeros(384, dtype=np.float32)
    vector[sum(map(ord, text)) % 384] = 1.0
    vector[len(text) % 384] += 0.5
    return vector


async def test_an_idle_embedder_encodes_in_its_own_thread_and_returns_the_callers_vector() -> None:
    model = TextModel()
    embedder = LocalEmbedder(timeout_seconds=30)
    embedder._model = cast(Any, model)
    for text in ("first", "second question", "第三个"):
        vectors = await embedder.embed([text])
        assert vectors.shape == (1, 384) and np.array_equal(vectors[0], vector_of(text))
    assert model.calls == [["first"], ["second question"], ["第三个"]]
    assert model.threads == {"embedder"}, "the model never runs on the event loop's thread"
    await embedder.close()


async def test_callers_arriving_while_a_batch_runs_share_the_next_one_and_each_gets_its_own_vectors() -> None:
    model = TextModel(gate=threading.Event())
    embedder = LocalEmbedder(timeout_seconds=30)
    embedder._model = cast(Any, model)
    first = asyncio.create_task(embedder.embed(["running"]))
    assert await asyncio.to_thread(model.started.wait, 30)
    texts = [[f"q{i}"] if i % 3 else [f"q{i}", f"q{i} again"] for i in range(12)]
    waiting = [asyncio.create_task(embedder.embed(t)) for t in texts]
    await asyncio.sleep(0)
    assert embedder.queued_texts == sum(map(len, texts))
    model.gate.set()
    results = await asyncio.gather(first, *waiting)
    for sent, got in zip([["running"], *texts], results, strict=True):
        assert np.array_equal(got, np.stack([vector_of(t) for t in sent]))
    assert model.calls == [["running"], [t for sent in texts for t in sent]], "the waiting calls made one batch"
    assert embedder.batches_run == 2 and embedder.queued_texts == 0
    await embedder.close()


async def test_a_failing_batch_fails_its_callers_only_and_the_embedder_keeps_serving() -> None:
    model = TextModel(gate=threading.Event(), fail_on="poison")
    embedder = LocalEmbedder(timeout_seconds=30)
    embedder._model = cast(Any, model)
    first = asyncio.create_task(embedder.embed(["running"]))
    assert await asyncio.to_thread(model.started.wait, 30)
    same_batch = [asyncio.create_task(embedder.embed([t])) for t in ("poison", "innocent")]
    await asyncio.sleep(0)
    model.gate.set()
    assert np.array_equal((await first)[0], vector_of("running"))
    for task in same_batch:
        with pytest.raises(EmbeddingUnavailable, match="the model failed"):
            await task
    assert np.array_equal((await embedder.embed(["after"]))[0], vector_of("after"))
    await embedder.close()


async def test_a_missed_deadline_leaves_the_thread_to_finish_and_the_next_call_is_served() -> None:
    model = TextModel(gate=threading.Event())
    embedder = LocalEmbedder(timeout_seconds=0.2)
    embedder._model = cast(Any, model)
    with pytest.raises(EmbeddingUnavailable, match="deadline"):
        await embedder.embed(["slow"])
    embedder.timeout_seconds = 30
    later = asyncio.create_task(embedder.embed(["later"]))
    await asyncio.sleep(0)
    assert embedder.queued_texts == 1, "one encode at a time: the next waits for the abandoned one"
    model.gate.set()
    assert np.array_equal((await later)[0], vector_of("later"))
    assert model.calls == [["slow"], ["later"]]
    await embedder.close()


async def test_close_answers_the_running_and_queued_callers_at_once() -> None:
    model = TextModel(gate=threading.Event())
    embedder = LocalEmbedder(timeout_seconds=30)
    embedder._model = cast(Any, model)
    running = asyncio.create_task(embedder.embed(["running"]))
    assert await asyncio.to_thread(model.started.wait, 30)
    queued = asyncio.create_task(embedder.embed(["queued"]))
    await asyncio.sleep(0)
    await embedder.close()
    for task in (running, queued):
        with pytest.raises(EmbeddingUnavailable, match="closed"):
            await task
    model.gate.set()  # the thread finishes its encode and ends; nobody is left to answer


async def test_a_model_that_cannot_load_fails_every_waiting_caller() -> None:
    embedder = LocalEmbedder(timeout_seconds=30)

    def broken() -> Any:
        raise OSError("no model file")

    embedder._load = broken  # type: ignore[method-assign]
    results = await asyncio.gather(*(embedder.embed([f"t{i}"]) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, EmbeddingUnavailable) and "no model file" in str(r) for r in results), results
    with pytest.raises(EmbeddingUnavailable, match="no model file"):
        await embedder.embed(["again"])
    await embedder.close()
