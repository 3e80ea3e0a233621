"""Background tasks: stopping one (cancel and wait until it has ended) and its wake-up wait."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

# How long a cancelled task may take to end before it is cancelled again.
_RECANCEL_SECONDS = 1.0


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancels `task` (if any) and waits for it, so nothing it holds outlives the caller's close.

    The cancellation is repeated while the task runs on: a library that swallows one (redis-py's
    async client can, inside a command) would otherwise leave a loop running and this wait hanging."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_SECONDS)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def wait_for_event(event: asyncio.Event, seconds: float) -> None:
    """Returns when `event` is set or after `seconds`, whichever comes first.

    Not `asyncio.wait_for(event.wait(), seconds)`: on Python 3.11 a cancellation that arrives as the
    event is set is swallowed (wait_for returns the inner result), so a background loop would run on
    and the close that cancelled it wait forever. `asyncio.timeout` lets that cancellation through."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
