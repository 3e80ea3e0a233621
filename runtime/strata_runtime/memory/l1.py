"""L1: the bounded in-process LRU of session state; a hit loads a session with no network I/O.

L1 may be stale when another pod served the session meanwhile; the durable append of the
next user turn is a compare-and-set on the sequence number, so staleness is detected by the
write that happens anyway and costs one reload only when it actually occurred.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from strata_runtime.memory.state import SessionState


class L1Pool:
    def __init__(self, max_sessions: int, on_size: Callable[[int], None] | None = None):
        self.max_sessions = max_sessions
        self._items: OrderedDict[tuple[str, str], SessionState] = OrderedDict()
        self._on_size = on_size
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, tenant: str, session_id: str) -> SessionState | None:
        state = self._items.get((tenant, session_id))
        if state is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end((tenant, session_id))
        state.last_used = time.monotonic()
        return state

    def put(self, state: SessionState) -> list[SessionState]:
        """Insert or refresh; returns the states pushed out by the size bound (to be spilled)."""
        key = (state.tenant, state.session_id)
        state.last_used = time.monotonic()
        self._items[key] = state
        self._items.move_to_end(key)
        evicted = []
        while len(self._items) > self.max_sessions:
            evicted.append(self._items.popitem(last=False)[1])
        self._report()
        return evicted

    def pop(self, tenant: str, session_id: str) -> SessionState | None:
        state = self._items.pop((tenant, session_id), None)
        self._report()
        return state

    def idle(self, idle_seconds: float) -> list[SessionState]:
        cutoff = time.monotonic() - idle_seconds
        return [s for s in self._items.values() if s.last_used < cutoff]

    def all(self) -> list[SessionState]:
        return list(self._items.values())

    def _report(self) -> None:
        if self._on_size is not None:
            self._on_size(len(self._items))
