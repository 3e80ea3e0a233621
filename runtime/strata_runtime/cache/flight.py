"""Single flight: one computation per exact key at a time, shared by every concurrent caller.

A streamed computation is pumped by its own task into the flight, and every caller (the
first one included) follows the shared chunk list: followers get the chunks live, not after
the leader finished, and a client that disconnects does not cut the stream for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

JSON = dict[str, Any]


class Flight:
    def __init__(self, streaming: bool):
        self.streaming = streaming
        self.chunks: list[JSON] = []
        self.completion: JSON | None = None
        self.error: BaseException | None = None
        self.done = False
        self._changed = asyncio.Event()

    def push(self, chunk: JSON) -> None:
        self.chunks.append(chunk)
        self._signal()

    def finish(self, completion: JSON | None = None, error: BaseException | None = None) -> None:
        self.completion, self.error, self.done = completion, error, True
        self._signal()

    def _signal(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_done(self) -> JSON:
        while not self.done:
            await self._changed.wait()
        if self.error is not None:
            raise self.error
        assert self.completion is not None
        return self.completion

    async def follow(self) -> AsyncIterator[JSON]:
        """Every chunk pushed so far and then live ones, until the flight ends."""
        i = 0
        while True:
            while i < len(self.chunks):
                yield self.chunks[i]
                i += 1
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            await self._changed.wait()
