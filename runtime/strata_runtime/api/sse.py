"""The response of every SSE route: chunks written straight to the connection, coalesced when ready.

Starlette's `StreamingResponse` runs the body in an anyio task group next to a disconnect
listener and sends every chunk through each middleware's `send` wrapper. Here the headers
go through the middleware chain (they add the request id, record the status), the body
messages go to the `send` the server gave the app (`RAW_SEND` in the scope), and
chunks the iterator already has (several SSE events in one upstream read, the last chunk and
`[DONE]`) leave in one write. A client that disconnects cancels the iteration, so the
upstream request ends and the tenant's slots are freed as soon as the server notices.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from strata_runtime.tasks import ENDED, finish, step_now, unwind

# The scope key under which the request middleware leaves the `send` it was given.
RAW_SEND = "strata.raw_send"
_MAX_BATCH = 64  # chunks per write at most: a fast upstream still gets written out in pieces


class Framing:
    """How the iterator's items become SSE bytes, in the relay loop itself (no generator layer
    per chunk for the framing): by default the items are the bytes, nothing is added at the end
    and an exception goes to the server."""

    end: ClassVar[bytes] = b""  # written after the last item (not after an error event)

    def frame(self, item: Any) -> bytes:
        return item  # type: ignore[no-any-return]

    def error(self, exc: Exception) -> bytes | None:
        """The last event for an exception raised by the iterator, or None to let it propagate."""
        return None


_BYTES = Framing()


class SSEResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[Any], headers: Mapping[str, str] | None = None,
                 framing: Framing = _BYTES) -> None:
        self.chunks = chunks
        self.framing = framing
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        loop = asyncio.get_running_loop()  # once: on Python 3.11 each lookup is a getpid() system call
        task = asyncio.current_task(loop)
        assert task is not None
        watcher = loop.create_task(_watch_disconnect(receive, task))
        try:
            await _relay(self.chunks, scope.get(RAW_SEND, send), self.framing)
        except asyncio.CancelledError:
            if not (watcher.done() and not watcher.cancelled() and watcher.result()) or task.uncancel():
                raise  # not (only) the client leaving: a real cancellation
        finally:
            watcher.cancel()
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any]) -> bool:
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()
    return True


async def _relay(chunks: AsyncIterator[Any], send: Send, framing: Framing) -> None:
    batch: list[bytes] = []
    frame = framing.frame
    try:
        while True:
            pending = chunks.__anext__().__await__()
            ready, value = step_now(pending)
            if not ready:  # nothing more without waiting: write what is there, then wait
                if batch:
                    try:
                        await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})
                    except BaseException as error:  # (a slow client's write waited, and it left meanwhile)
                        await unwind(pending, value, error)
                        raise
                    batch = []
                try:
                    value = await finish(pending, value)
                except StopAsyncIteration:
                    break
            elif value is ENDED:
                break
            batch.append(frame(value))
            if len(batch) >= _MAX_BATCH:
                await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})
                batch = []
        batch.append(framing.end)
    except Exception as exc:
        event = framing.error(exc)
        if event is None:
            raise
        batch.append(event)
    await send({"type": "http.response.body", "body": b"".join(batch), "more_body": False})
