"""A turn's producer: chunks reach readers only once written, chunks that arrive while a write is
in flight go together in the next write, and a store that answers at once is written chunk by chunk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from strata_runtime.agents.conversation import Event, Producer
from strata_runtime.gateway.contract import CallContext
from strata_runtime.memory.state import Turn
from strata_runtime.stores.health import StoreUnavailable


class _Store:
    """The memory engine's part the producer uses; a write waits on `gate` when one is set."""

    def __init__(self) -> None:
        self.written: list[list[str]] = []  # what each write held, once it returned
        self.gate: asyncio.Event | None = None
        self.fail_with: Exception | None = None
        self.heartbeats = 0

    async def flush_chunks(self, state: Any, seq: int, *, owner: str, start: int, chunks: list[str]) -> bool:
        if not chunks:
            self.heartbeats += 1
            return True
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        assert start == sum(len(w) for w in self.written)
        self.written.append(list(chunks))
        return True

    async def complete(self, state: Any, seq: int, content: str, *, owner: str) -> Turn:
        return Turn(seq=seq, role="assistant", content=content, ts=time.time())

    async def fail(self, state: Any, seq: int, *, owner: str, error: str) -> None:
        pass


class _Model:
    """A gateway whose answer arrives piece by piece, each when the test lets it."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.next_piece = asyncio.Semaphore(0)

    async def stream(self, body: dict[str, Any], ctx: CallContext) -> Any:
        async def chunks() -> AsyncIterator[dict[str, Any]]:
            for piece in self.pieces:
                await self.next_piece.acquire()
                yield {"choices": [{"delta": {"content": piece}}]}

        return SimpleNamespace(chunks=chunks())


def _producer(store: _Store, model: _Model, stale_seconds: float = 60.0) -> Producer:
    conv = SimpleNamespace(engine=store, gateway=lambda: model, depth=None, tool_loop=None, stale_seconds=stale_seconds,
                           pod_id="pod", producers={}, schedule_archive=lambda state, ctx: None)
    state = SimpleNamespace(tenant="t", session_id="s")
    return Producer(conv, state, 1, body={}, ctx=CallContext(tenant="t"), prefix=[])  # type: ignore[arg-type]


async def _read(producer: Producer, store: _Store, seen: list[tuple[Event, int]]) -> None:
    async for event in producer.follow(0):
        seen.append((event, sum(len(w) for w in store.written)))  # the event, and how many chunks were written


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_chunks_that_arrive_during_a_write_go_together_in_the_next_and_readers_wait_for_the_write() -> None:
    store, model = _Store(), _Model(["a", "b", "c", "d"])
    store.gate = asyncio.Event()
    producer = _producer(store, model)
    seen: list[tuple[Event, int]] = []
    reader = asyncio.create_task(_read(producer, store, seen))
    run = asyncio.create_task(producer.run())
    model.next_piece.release()  # "a": its write starts and waits
    await _settle()
    model.next_piece.release()  # "b", "c" arrive while it is in flight
    model.next_piece.release()
    await _settle()
    assert seen == [] and store.written == []  # nothing shown before it is written
    store.gate.set()
    await _settle()
    model.next_piece.release()  # "d"
    await asyncio.wait_for(run, 5)
    await asyncio.wait_for(reader, 5)
    assert store.written == [["a"], ["b", "c"], ["d"]]
    chunks = [(e.index, e.text, written) for e, written in seen if e.kind == "chunk"]
    assert [(i, t) for i, t, _ in chunks] == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    assert all(written > i for i, _, written in chunks)  # each one was written before it was seen
    assert seen[-1][0].kind == "done" and seen[-1][0].text == "abcd"


async def test_a_store_that_answers_at_once_is_written_chunk_by_chunk_in_order() -> None:
    store, model = _Store(), _Model(["x", "y", "z"])
    producer = _producer(store, model)
    seen: list[tuple[Event, int]] = []
    reader = asyncio.create_task(_read(producer, store, seen))
    run = asyncio.create_task(producer.run())
    for _ in range(3):
        model.next_piece.release()
        await _settle()
    await asyncio.wait_for(run, 5)
    await asyncio.wait_for(reader, 5)
    assert store.written == [["x"], ["y"], ["z"]]
    assert [(e.kind, e.text) for e, _ in seen] == [("chunk", "x"), ("chunk", "y"), ("chunk", "z"), ("done", "xyz")]


async def test_a_write_that_fails_in_flight_fails_the_turn_and_its_chunks_are_never_shown() -> None:
    store, model = _Store(), _Model(["a", "b"])
    store.gate = asyncio.Event()
    store.fail_with = StoreUnavailable("session store (Redis) unreachable; retry shortly", retry_after_seconds=1.0)
    producer = _producer(store, model)
    seen: list[tuple[Event, int]] = []
    reader = asyncio.create_task(_read(producer, store, seen))
    run = asyncio.create_task(producer.run())
    model.next_piece.release()
    model.next_piece.release()
    await _settle()
    store.gate.set()
    await asyncio.wait_for(run, 5)
    await asyncio.wait_for(reader, 5)
    assert [e.kind for e, _ in seen] == ["error"]
    assert isinstance(seen[0][0].error, StoreUnavailable)


async def test_a_silent_model_still_gets_heartbeats_and_none_follow_the_end_of_the_turn() -> None:
    store, model = _Store(), _Model(["a"])
    producer = _producer(store, model, stale_seconds=0.04)  # one heartbeat every 10 ms
    run = asyncio.create_task(producer.run())
    await asyncio.sleep(0.2)
    assert store.heartbeats >= 3
    model.next_piece.release()
    await asyncio.wait_for(run, 5)
    after_end = store.heartbeats
    await asyncio.sleep(0.1)
    assert store.heartbeats == after_end
