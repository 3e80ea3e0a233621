"""Python tool entry points for the python executor's tests."""

from __future__ import annotations

import time


def add(a: int, b: int) -> dict[str, int]:
    return {"sum": a + b}


def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def broken() -> None:
    raise RuntimeError("tool bug")


async def async_add(a: int, b: int) -> int:
    return a + b
