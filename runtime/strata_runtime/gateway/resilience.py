"""Retry pacing and a circuit breaker per upstream.

Backoff is "full jitter" (sleep a uniform random time in [0, min(cap, base * 2**attempt)]),
so that many pods retrying the same failed upstream spread out instead of stampeding.
An upstream's own `Retry-After` wins when it is bounded (at most `MAX_RETRY_AFTER`); a longer
one is not waited for, and the caller does not ask that upstream again within the call.

Circuit breaker states:

    closed ──(N consecutive retryable failures)──▶ open ──(cool-down passed)──▶ half-open
      ▲                                                                             │
      └────────────────────(the one probe call succeeds)────────────────────────────┘
                                      (the probe fails) ──▶ open again
"""

from __future__ import annotations

import random
import time
from typing import Literal

BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0
MAX_RETRY_AFTER = 5.0

State = Literal["closed", "open", "half_open"]


def backoff_delay(attempt: int, retry_after: float | None = None, *, rng: random.Random | None = None) -> float:
    if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER:
        return retry_after
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2**attempt))
    return (rng or random).uniform(0.0, ceiling)


class CircuitBreaker:
    def __init__(self, failure_threshold: int, open_seconds: float):
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self._now = time.monotonic
        self.failures = 0
        self.opened_at = 0.0
        self._state: State = "closed"
        self._probe_in_flight = False

    @property
    def state(self) -> State:
        if self._state == "open" and self._now() - self.opened_at >= self.open_seconds:
            self._state = "half_open"
            self._probe_in_flight = False
        return self._state

    def allow(self) -> bool:
        """May a call go to this upstream now? In half-open, exactly one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def retry_in(self) -> float:
        return max(0.0, self.open_seconds - (self._now() - self.opened_at)) if self._state == "open" else 0.0

    def record_success(self) -> None:
        self.failures = 0
        self._state = "closed"
        self._probe_in_flight = False

    def record_failure(self) -> None:
        if self._state == "half_open":
            self._open()
            return
        self.failures += 1
        if self.failures >= self.failure_threshold:
            self._open()

    def release_probe(self) -> None:
        """A probe ended without a verdict on the upstream (e.g. a client 4xx): let another one try."""
        self._probe_in_flight = False

    def _open(self) -> None:
        self._state = "open"
        self.opened_at = self._now()
        self.failures = 0
        self._probe_in_flight = False
