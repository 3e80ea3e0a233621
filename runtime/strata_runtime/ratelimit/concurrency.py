"""Per-tenant bounds on work in flight in this process: requests and response streams.

Rate limits (`limiter.py`) bound how often a tenant may start work; these bound how much
it may have open at once, so 256 streams of one tenant cannot take every upstream
connection and leave another tenant without a byte. A slot is taken when the request is
authenticated and given back when its response ends, however it ends (a client that
disconnects mid-stream frees it too): the holder is an `async with`/`try` in the request's
dependency, which FastAPI exits after the response has been sent or abandoned.
Over the bound the answer is 429 at once: waiting would only hold the socket longer.
"""

from __future__ import annotations

from collections import Counter

from strata_runtime.config.http import TenantConcurrency
from strata_runtime.errors import RateLimited


class TenantSlots:
    def __init__(self, limits: TenantConcurrency):
        self.limits = limits
        self._requests: Counter[str] = Counter()
        self._streams: Counter[str] = Counter()

    def take(self, tenant: str) -> Slot:
        _take(self._requests, tenant, self.limits.requests, "concurrent_requests")
        return Slot(self, tenant)

    def in_flight(self, tenant: str) -> tuple[int, int]:
        """(requests, streams) of `tenant` now in flight."""
        return self._requests[tenant], self._streams[tenant]


class Slot:
    """One request's place; `streaming()` also takes a stream place, `release()` frees both once."""

    def __init__(self, slots: TenantSlots, tenant: str):
        self._slots = slots
        self._tenant = tenant
        self._streaming = False
        self._released = False

    def streaming(self) -> None:
        if not self._streaming:
            _take(self._slots._streams, self._tenant, self._slots.limits.streams, "concurrent_streams")
            self._streaming = True

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        _give_back(self._slots._requests, self._tenant)
        if self._streaming:
            _give_back(self._slots._streams, self._tenant)


def _take(counts: Counter[str], tenant: str, limit: int | None, name: str) -> None:
    if limit is not None and counts[tenant] >= limit:
        raise RateLimited(f"this tenant already has {limit} {name.replace('_', ' ')} in flight; retry when one ends",
                          retry_after_seconds=1, details={"scope": "tenant", "limit": name})
    counts[tenant] += 1


def _give_back(counts: Counter[str], tenant: str) -> None:
    counts[tenant] -= 1
    if counts[tenant] <= 0:
        del counts[tenant]  # idle tenants take no memory
