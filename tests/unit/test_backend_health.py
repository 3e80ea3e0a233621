"""Readiness hysteresis: timeouts count in a row, a refused connection counts at once."""

from __future__ import annotations

import pytest

from strata_runtime.stores.health import BackendHealth, StoreUnavailable


def _health(threshold: int = 3) -> BackendHealth:
    health = BackendHealth(name="redis", kind="standalone", required=False, failure_threshold=threshold)
    health.mark_ok()
    return health


def _state(health: BackendHealth) -> str:
    return health.state  # read through a function: mypy would otherwise keep the narrowed literal


def test_one_slow_ping_does_not_flip_the_state_but_a_streak_does() -> None:
    health = _health()
    health.mark_failed(TimeoutError("slow"), definite=False)
    health.mark_failed(TimeoutError("slow"), definite=False)
    assert _state(health) == "ok"
    health.mark_failed(TimeoutError("slow"), definite=False)
    assert _state(health) == "degraded"


def test_a_success_between_timeouts_breaks_the_streak() -> None:
    health = _health()
    for _ in range(5):
        health.mark_failed(TimeoutError("slow"), definite=False)
        health.mark_failed(TimeoutError("slow"), definite=False)
        health.note_success()
    assert health.state == "ok"


def test_a_refused_connection_flips_at_once_and_a_required_backend_is_down() -> None:
    health = BackendHealth(name="redis", kind="standalone", required=True, failure_threshold=3)
    health.mark_ok()
    health.mark_failed(ConnectionRefusedError("refused"))
    assert _state(health) == "down"
    health.mark_ok()
    assert _state(health) == "ok"


@pytest.mark.parametrize(("seconds", "header"), [(0.5, "1"), (1.0, "1"), (2.2, "3")])
def test_store_unavailable_is_a_503_with_a_whole_retry_after(seconds: float, header: str) -> None:
    error = StoreUnavailable("session store unreachable", retry_after_seconds=seconds)
    assert (error.status, error.code, error.headers()) == (503, "store_unavailable", {"Retry-After": header})
