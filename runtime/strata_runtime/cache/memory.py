"""The in-process entry store: LRU + TTL, bounded by entry count AND bytes.

The embedded default, and what `auto` uses while Redis is down. Evictions and expiries
call `on_evict(key)` so the semantic index never points at a vanished answer.
"""

from __future__ import annotations

import fnmatch
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from strata_runtime.cache.index import SemanticIndex

ENTRY_OVERHEAD_BYTES = 200  # key, bookkeeping and dict slot, roughly


@dataclass(slots=True)
class _Item:
    value: bytes
    expires: float
    tenant: str
    model: str
    size: int
    query: str = ""


class MemoryStore:
    kind = "memory"

    def __init__(self, *, max_entries: int, max_bytes: int, on_evict: Callable[[str], None] | None = None):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.on_evict = on_evict
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self.bytes = 0
        self.evictions = 0
        self.index = SemanticIndex()
        self.queries: dict[str, str] = {}  # exact key -> the query text a semantic row was stored for

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires <= time.monotonic():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item.value

    def set(self, key: str, value: bytes, ttl_seconds: float, *, tenant: str, model: str,
            query: str = "") -> bool:
        size = len(value) + len(key) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return False  # one oversized answer must not flush the whole cache
        if key in self._items:
            self._drop(key, notify=False)
        self._items[key] = _Item(value, time.monotonic() + ttl_seconds, tenant, model, size, query)
        self.bytes += size
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._items))
            self._drop(oldest)
            self.evictions += 1
        return True

    def delete(self, key: str) -> None:
        if key in self._items:
            self._drop(key)

    def _drop(self, key: str, *, notify: bool = True) -> None:
        item = self._items.pop(key)
        self.bytes -= item.size
        self.index.remove(key)
        self.queries.pop(key, None)
        if notify and self.on_evict is not None:
            self.on_evict(key)

    def invalidate(self, *, tenant: str | None, pattern: str | None) -> int:
        doomed = [k for k, item in self._items.items()
                  if (tenant is None or item.tenant == tenant)
                  and (pattern is None or matches(pattern, k, item.query))]
        for key in doomed:
            self._drop(key)
        return len(doomed)


def matches(pattern: str, key: str, query: str) -> bool:
    """`invalidate(pattern)`: a glob over the entry's key or its prompt (the last user message)."""
    return fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(query, pattern)
