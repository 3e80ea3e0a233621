"""Backend health as seen by readiness, metrics and the components that use the backend."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger("strata.stores")

State = Literal["ok", "degraded", "down"]
Probe = Callable[[], Awaitable[None]]


@dataclass
class BackendHealth:
    """Tracks one backend: `ok` (real backend in use), `degraded` (embedded fallback in use,
    recovering in the background) or `down` (required and unreachable)."""

    name: str
    kind: str
    required: bool
    state: State = "down"
    detail: str = ""
    since: float = field(default_factory=time.time)
    _warned: bool = False
    _recovery: asyncio.Task[None] | None = field(default=None, repr=False)

    def mark_ok(self) -> None:
        if self.state != "ok":
            if self._warned:
                log.warning("backend recovered", extra={"backend": self.name, "kind": self.kind})
            self.state, self.detail, self.since = "ok", "", time.time()
            self._warned = False

    def mark_failed(self, error: BaseException | str) -> None:
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
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
            self._recovery = None

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "state": self.state, "required": self.required, "detail": self.detail}


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    # Connection errors can echo URLs; keep the part before any credentials or query.
    return text.split("@")[-1][:300] if "://" in text else text[:300]
