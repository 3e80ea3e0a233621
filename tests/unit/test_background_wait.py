"""A background loop that waits for its wake-up event or a period must stop when cancelled, even when
the cancellation arrives as the event is set (Python 3.11's asyncio.wait_for swallowed it there: the
loop ran on and the close that cancelled it waited forever)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest

from strata_runtime.tasks import cancel_and_wait, wait_for_event

pytestmark = pytest.mark.unit


async def _loop(wake: asyncio.Event, rounds: list[int]) -> None:
    while True:
        await wait_for_event(wake, 30.0)
        wake.clear()
        rounds.append(1)


async def test_a_cancel_that_arrives_with_the_wake_up_stops_the_loop() -> None:
    wake, rounds = asyncio.Event(), []
    task = asyncio.create_task(_loop(wake, rounds))
    await asyncio.sleep(0)  # the loop waits
    wake.set()
    task.cancel()  # in the same loop iteration as the wake-up
    done, _ = await asyncio.wait({task}, timeout=2.0)
    assert task in done and task.cancelled(), f"the loop ran on after its cancellation ({len(rounds)} rounds)"


async def test_the_wait_ends_on_the_event_or_the_period() -> None:
    wake = asyncio.Event()
    wake.set()
    await asyncio.wait_for(wait_for_event(wake, 30.0), 2.0)  # set: returns at once
    wake.clear()
    await asyncio.wait_for(wait_for_event(wake, 0.05), 2.0)  # not set: returns after the period


async def test_the_old_pattern_swallows_that_cancellation_on_this_python() -> None:
    """Why the helper exists; if a Python release fixes asyncio.wait_for, this test says so."""
    wake = asyncio.Event()

    async def old_loop() -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 30.0)
            wake.clear()

    task = asyncio.create_task(old_loop())
    await asyncio.sleep(0)
    wake.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.5)
    swallowed = task not in done
    await cancel_and_wait(task)  # a second cancellation gets through
    assert swallowed == (sys.version_info < (3, 12))


async def test_cancel_and_wait_repeats_a_cancellation_the_task_swallowed() -> None:
    rounds: list[int] = []

    async def swallowing_loop() -> None:  # as a library catching CancelledError inside a call would
        while True:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                if rounds:
                    raise
                rounds.append(1)

    task = asyncio.create_task(swallowing_loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), 10.0)
    assert task.cancelled() and rounds == [1]
