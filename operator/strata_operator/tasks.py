"""One helper for every background task of the operator: `Tasks`, a named set of asyncio tasks.

The operator runs work that must not hold up the code that asked for it: retries after a
back-off, status writes held back for a while, status refreshes queued behind a reconcile, the
work a watch event triggers, and long-running loops (watches, the drift sweep). Each kind is one
`Tasks`; the helper keeps a reference to every task (asyncio keeps only weak ones), logs and
counts every failure, knows how many are pending (the work-queue depth metric), allows at most
one pending task per key where a key is given, and cancels them all on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Hashable
from typing import Any

from strata_operator import metrics

log = logging.getLogger("strata.operator")


class Tasks:
    def __init__(self, queue: str):
        self.queue = queue
        """The name of this kind of work (label of the work-queue depth metric, part of task names)."""
        self._unkeyed: set[asyncio.Task[None]] = set()
        self._keyed: dict[Hashable, asyncio.Task[None]] = {}
        metrics.WORK_QUEUE_DEPTH.labels(queue).set_function(self.__len__)

    def __len__(self) -> int:
        return len(self._unkeyed) + len(self._keyed)

    def start(self, work: Coroutine[Any, Any, None], name: str, *, key: Hashable | None = None) -> bool:
        """Run `work` on its own; with a `key`, only if no task of that key is pending (else
        `work` is dropped: the pending one does the same job). Whether it was started."""
        if key is not None and key in self._keyed:
            work.close()
            return False
        task = asyncio.create_task(work, name=f"strata-{self.queue}-{name}")
        if key is None:
            self._unkeyed.add(task)
        else:
            self._keyed[key] = task
        task.add_done_callback(lambda t: self._done(t, key))
        return True

    def pending(self, key: Hashable) -> bool:
        return key in self._keyed

    def release(self, key: Hashable) -> None:
        """Called by a keyed task once it has started its job: from then on, a new request for
        the same key starts a new task instead of being dropped (it may need newer data)."""
        task = self._keyed.get(key)
        if task is not None and task is asyncio.current_task():
            del self._keyed[key]

    def cancel(self, key: Hashable) -> None:
        """Cancel the pending task of `key`, unless it is the caller itself."""
        task = self._keyed.get(key)
        if task is not None and task is not asyncio.current_task():
            del self._keyed[key]
            task.cancel()

    async def close(self) -> None:
        tasks = [*self._unkeyed, *self._keyed.values()]
        self._unkeyed.clear()
        self._keyed.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None], key: Hashable | None) -> None:
        if key is None:
            self._unkeyed.discard(task)
        elif self._keyed.get(key) is task:
            del self._keyed[key]
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            metrics.ERRORS.labels(kind="Operator", reason="TaskFailed").inc()
            log.error("%s failed", task.get_name(), exc_info=error)
