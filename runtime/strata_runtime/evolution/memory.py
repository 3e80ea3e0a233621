"""The evolution store in process memory (tests, single-process development)."""

from __future__ import annotations

import time
from typing import Any

from strata_runtime.evolution.store import EvolutionEvent, EvolutionStore, Experiment, Version, content_hash


class MemoryEvolutionStore(EvolutionStore):
    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], list[Version]] = {}
        self._active: dict[tuple[str, str], int] = {}
        self._events: list[EvolutionEvent] = []
        self._experiments: dict[str, Experiment] = {}
        self._outcomes: list[dict[str, Any]] = []

    async def migrate(self) -> None:
        return None

    async def _insert_version(self, kind: str, name: str, content: dict[str, Any], author: str,
                              note: str) -> Version:
        history = self._versions.setdefault((kind, name), [])
        version = Version(kind, name, len(history) + 1, content, content_hash(content), author, note, time.time())
        history.append(version)
        return version

    async def versions(self, kind: str, name: str) -> list[Version]:
        return list(self._versions.get((kind, name), []))

    async def _get_version(self, kind: str, name: str, version: int) -> Version | None:
        history = self._versions.get((kind, name), [])
        return history[version - 1] if 1 <= version <= len(history) else None

    async def _set_active(self, kind: str, name: str, version: int) -> None:
        self._active[(kind, name)] = version

    async def _active_number(self, kind: str, name: str) -> int | None:
        return self._active.get((kind, name))

    async def _insert_event(self, kind: str, name: str, action: str, *, version: int | None, author: str,
                            detail: dict[str, Any]) -> None:
        self._events.append(EvolutionEvent(len(self._events) + 1, kind, name, action, version, author, detail,
                                           time.time()))

    async def events(self, kind: str | None = None, name: str | None = None,
                     limit: int = 100) -> list[EvolutionEvent]:
        found = [e for e in reversed(self._events)
                 if (kind is None or e.kind == kind) and (name is None or e.name == name)]
        return found[:limit]

    async def _insert_experiment(self, experiment: Experiment) -> None:
        self._experiments[experiment.id] = experiment

    async def _get_experiment(self, experiment_id: str) -> Experiment | None:
        return self._experiments.get(experiment_id)

    async def _set_experiment_status(self, experiment_id: str, status: str) -> None:
        old = self._experiments[experiment_id]
        self._experiments[experiment_id] = Experiment(old.id, old.kind, old.name, old.arms, status, old.author,
                                                      old.created_at)

    async def _insert_outcome(self, experiment_id: str, arm: str, session_id: str, *, success: bool | None,
                              latency_ms: float | None, tokens: int | None, feedback: int | None) -> None:
        self._outcomes.append({"experiment": experiment_id, "arm": arm, "session": session_id, "success": success,
                               "latency_ms": latency_ms, "tokens": tokens, "feedback": feedback})

    async def _aggregate(self, experiment_id: str) -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for o in (o for o in self._outcomes if o["experiment"] == experiment_id):
            row = rows.setdefault(o["arm"], {"arm": o["arm"], "outcomes": 0, "successes": 0, "latency_sum": 0.0,
                                             "latency_count": 0, "tokens": 0, "up": 0, "down": 0})
            if o["success"] is not None:
                row["outcomes"] += 1
                row["successes"] += int(bool(o["success"]))
            if o["latency_ms"] is not None:
                row["latency_sum"] += o["latency_ms"]
                row["latency_count"] += 1
            row["tokens"] += o["tokens"] or 0
            row["up"] += int(o["feedback"] == 1)
            row["down"] += int(o["feedback"] == -1)
        return list(rows.values())
