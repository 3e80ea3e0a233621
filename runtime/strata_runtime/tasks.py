"""Background tasks: stopping one (cancel and wait until it has ended), its wake-up wait, and
stepping an awaitable by hand (run it now as far as it goes without waiting, finish it later)."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Generator
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


ENDED: Any = object()  # what `step_now` gives for an iterator's end (StopAsyncIteration)


def step_now(step: Generator[Any, Any, Any]) -> tuple[bool, Any]:
    """Runs an awaitable (its `__await__()`) until it first waits: (True, its result, or
    ENDED when it raised StopAsyncIteration) if it finished, else (False, what it waits on)
    for `finish`. No task switch and no loop iteration when the result is already there."""
    try:
        return False, step.send(None)
    except StopIteration as done:
        return True, done.value
    except StopAsyncIteration:
        return True, ENDED


@types.coroutine
def finish(step: Generator[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """Carries on an awaitable `step_now` started, as an `await` would have (the task waits on what it
    yields; a cancellation goes into the awaitable, as with a plain await)."""
    while True:
        try:
            sent = yield waiting_on
        except BaseException as error:
            try:
                waiting_on = step.throw(error)
            except StopIteration as done:
                return done.value
            continue
        try:
            waiting_on = step.send(sent)
        except StopIteration as done:
            return done.value


async def unwind(step: Generator[Any, Any, Any], waiting_on: Any, error: BaseException) -> None:
    """Ends an awaitable `step_now` started that nobody will finish: `error` goes into it where it
    waits (its clean-up runs, and may wait), and whatever it raises then is dropped. Left half-run,
    an async generator's `__anext__` keeps the generator "running": its `aclose()` would fail."""
    del waiting_on  # it waited on that; the error replaces the answer
    with contextlib.suppress(BaseException):
        after = step.throw(error)
        await finish(step, after)
