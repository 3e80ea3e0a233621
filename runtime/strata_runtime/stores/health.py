"""Backend health as seen by readiness, metrics and the components that use the backend."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from strata_runtime.errors import ServiceUnavailable
from strata_runtime.tasks import cancel_and_wait

log = logging.getLogger("strata.stores")

State = Literal["ok", "degraded", "down"]
Probe = Callable[[], Awaitable[None]]


class StoreUnavailable(ServiceUnavailable):
    """A store that holds required state (sessions) cannot be reached: 503 with Retry-After.

    Raised instead of writing to a fallback, so a client never gets an acknowledgement for
    a write that is not durable where the session lives (docs/durability.md)."""

    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after_seconds: float):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_seconds)))}


@dataclass
class BackendHealth:
    """Tracks one backend: `ok` (real backend in use), `degraded` (embedded fallback in use,
    recovering in the background) or `down` (required and unreachable).

    Hysteresis: a definite failure (connection refused or reset) flips the state at once, but
    an ambiguous one (a timeout: a slow PING, a slow command) only after `failure_threshold`
    in a row, so one slow probe does not take a whole fleet out of rotation."""

    name: str
    kind: str
    required: bool
    state: State = "down"
    detail: str = ""
    since: float = field(default_factory=time.time)
    failure_threshold: int = 1
    _failures: int = 0
    _warned: bool = False
    _recovery: asyncio.Task[None] | None = field(default=None, repr=False)

    def mark_ok(self) -> None:
        if self.state != "ok":
            if self._warned:
                log.warning("backend recovered", extra={"backend": self.name, "kind": self.kind})
            self.state, self.detail, self.since = "ok", "", time.time()
            self._warned = False
        self._failures = 0

    def note_success(self) -> None:
        """A command succeeded: earlier timeouts were not a streak."""
        self._failures = 0

    def mark_failed(self, error: BaseException | str, *, definite: bool = True) -> None:
        self._failures += 1
        if not definite and self.state == "ok" and self._failures < self.failure_threshold:
            log.info("backend slow; not yet counted as unreachable",
                     extra={"backend": self.name, "failures": self._failures, "detail": _describe(error)})
            return
        detail = _describe(error)
        new_state: State = "down" if self.required else "degraded"
        if self.state != new_state:
            self.since = time.time()
        self.state, self.detail = new_state, detail
        if not self._warned:
            self._warned = True
            log.warning(
                "backend unreachable; %s",
                "readiness fails" if self.required else "using the embedded fallback",
                extra={"backend": self.name, "kind": self.kind, "detail": detail},
            )

    async def probe(self, probe: Probe) -> None:
        """Run one probe of the real backend and record what it said."""
        try:
            await probe()
        except Exception as e:
            self.mark_failed(e)
        else:
            self.mark_ok()

    def keep_recovering(self, probe: Probe, interval_seconds: float) -> None:
        """Retry the real backend in the background while it is not ok, until `stop_recovering`."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_seconds)
                if self.state != "ok":
                    await self.probe(probe)

        self._recovery = asyncio.create_task(loop(), name=f"{self.name}-recovery")

    async def stop_recovering(self) -> None:
        await cancel_and_wait(self._recovery)
        self._recovery = None

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "state": self.state, "required": self.required, "detail": self.detail}


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    # Connection errors can echo URLs; keep the part before any credentials or query.
    return text.split("@")[-1][:300] if "://" in text else text[:300]
