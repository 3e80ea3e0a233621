"""The SSE response: ready chunks leave in one body message, a disconnect ends the iteration."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from strata_runtime.api.sse import RAW_SEND, SSEResponse


class _Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()

    async def __call__(self, message: Any) -> None:
        self.messages.append(message)
        self._arrived.set()

    async def until(self, count: int) -> None:
        while len(self.messages) < count:
            self._arrived.clear()
            await self._arrived.wait()


async def _never_disconnects() -> Any:
    await asyncio.Event().wait()


async def _one_chunk_then_silence(ended: asyncio.Event) -> AsyncIterator[bytes]:
    """An upstream that sends one chunk and then nothing more; `ended` is set once it is closed."""
    try:
        yield b"first"
        await asyncio.Event().wait()
        yield b"never"
    finally:
        ended.set()


def _disconnects_when(event: asyncio.Event) -> Any:
    async def receive() -> Any:
        await event.wait()
        return {"type": "http.disconnect"}
    return receive


async def test_chunks_ready_together_leave_in_one_write_and_waits_split_writes() -> None:
    gate = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"
        await gate.wait()
        yield b"c"
        yield b"d"

    chain, raw = _Recorder(), _Recorder()
    response = SSEResponse(chunks(), headers={"x-test": "1"})
    task = asyncio.create_task(response({"type": "http", RAW_SEND: raw}, _never_disconnects, chain))
    await raw.until(1)
    gate.set()
    await task
    assert [m["type"] for m in chain.messages] == ["http.response.start"]  # the headers go through the chain
    assert (b"x-test", b"1") in chain.messages[0]["headers"]
    assert [(m["body"], m["more_body"]) for m in raw.messages] == [(b"ab", True), (b"cd", False)]


async def test_a_disconnect_cancels_the_iteration_and_the_response_returns() -> None:
    ended = asyncio.Event()
    disconnected = asyncio.Event()
    send = _Recorder()
    task = asyncio.create_task(SSEResponse(_one_chunk_then_silence(ended))({"type": "http"},
                                                                           _disconnects_when(disconnected), send))
    await send.until(2)
    disconnected.set()
    await asyncio.wait_for(task, 10)  # returns normally: the client left, nothing failed
    assert ended.is_set()
    assert [m.get("body") for m in send.messages] == [None, b"first"]


async def test_a_cancellation_from_outside_still_propagates() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(SSEResponse(chunks())({"type": "http"}, _never_disconnects, _Recorder()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_client_leaving_while_a_write_waits_closes_the_iteration_it_had_started() -> None:
    """The next chunk is asked for before the ready ones are written; a write that waits (a slow
    client) and is cancelled there must not leave that request half-run: the iterator is closed."""
    ended = asyncio.Event()
    disconnected = asyncio.Event()
    written = asyncio.Event()

    async def slow_send(message: Any) -> None:
        if message["type"] == "http.response.body":
            written.set()
            await asyncio.Event().wait()  # the socket's buffer is full: the write waits

    task = asyncio.create_task(SSEResponse(_one_chunk_then_silence(ended))({"type": "http"},
                                                                           _disconnects_when(disconnected), slow_send))
    await written.wait()
    disconnected.set()
    await asyncio.wait_for(task, 10)  # no "aclose(): asynchronous generator is already running"
    assert ended.is_set()
