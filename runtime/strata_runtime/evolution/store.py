"""The evolution store's interface and the rules every backend shares.

* Versions: each (kind, name) — kind `config` (an agent definition, name `tenant/agent`) or
  `skill` (name `tenant/agent/skill`) — has versions 1, 2, 3, ...; adding one makes it active.
* Events: who did what to which (kind, name), when (version added, rollback, experiment
  started/stopped), newest first.
* Rollback: makes an existing older version active again (and records an event); a version
  that does not exist is a 404 and changes nothing.
* A/B experiments split a name's traffic between versions by weight (summing to 100): a session
  is assigned by a stable hash of (experiment, session id), so it stays on one arm on every
  pod. Outcomes (success, latency, tokens) and user feedback are recorded per session and
  aggregated per arm.
"""

from __future__ import annotations

import hashlib
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

from strata_runtime.errors import NotFound, ValidationFailed

Kind = Literal["config", "skill"]
KINDS = ("config", "skill")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Version:
    kind: str
    name: str
    version: int
    content: dict[str, Any]
    content_hash: str
    author: str
    note: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "version": self.version, "content": self.content,
                "contentHash": self.content_hash, "author": self.author, "note": self.note,
                "createdAt": self.created_at}


@dataclass(frozen=True)
class EvolutionEvent:
    seq: int
    kind: str
    name: str
    action: str
    version: int | None
    author: str
    detail: dict[str, Any]
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "name": self.name, "action": self.action,
                "version": self.version, "author": self.author, "detail": self.detail, "at": self.at}


@dataclass(frozen=True)
class Arm:
    label: str
    version: int
    weight: int

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "version": self.version, "weight": self.weight}


@dataclass(frozen=True)
class Experiment:
    id: str
    kind: str
    name: str
    arms: tuple[Arm, ...]
    status: str
    author: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "arms": [a.to_json() for a in self.arms],
                "status": self.status, "author": self.author, "createdAt": self.created_at}


@dataclass
class ArmResult:
    label: str
    version: int
    outcomes: int = 0
    successes: int = 0
    latency_ms_total: float = 0.0
    latency_count: int = 0
    tokens: int = 0
    feedback_up: int = 0
    feedback_down: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "version": self.version, "outcomes": self.outcomes,
                "successes": self.successes,
                "successRate": round(self.successes / self.outcomes, 4) if self.outcomes else None,
                "avgLatencyMs": round(self.latency_ms_total / self.latency_count, 3) if self.latency_count else None,
                "tokens": self.tokens, "feedbackUp": self.feedback_up, "feedbackDown": self.feedback_down}


def content_hash(content: dict[str, Any]) -> str:
    import orjson

    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def assign_arm(experiment_id: str, session_id: str, arms: tuple[Arm, ...]) -> Arm:
    """The arm of a session: a stable bucket 0..99 from SHA-256(experiment:session), arms in order."""
    digest = hashlib.sha256(f"{experiment_id}:{session_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    upto = 0
    for arm in arms:
        upto += arm.weight
        if bucket < upto:
            return arm
    return arms[-1]


def check_key(kind: str, name: str) -> None:
    if kind not in KINDS:
        raise ValidationFailed(f"kind must be one of {', '.join(KINDS)}", field="kind")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationFailed("name must be 1-200 characters of letters, digits and _ . : / -", field="name")


def check_text(value: str, field: str) -> None:
    """A NUL character cannot be stored in a Postgres text column: refused on every backend alike."""
    if "\x00" in value:
        raise ValidationFailed(f"{field} must not contain a NUL character", field=field)


def check_arms(arms: list[Arm]) -> None:
    if len(arms) < 2:
        raise ValidationFailed("an experiment needs at least two arms", field="arms")
    labels = [a.label for a in arms]
    if len(set(labels)) != len(labels):
        raise ValidationFailed("arm labels must be unique", field="arms")
    for i, arm in enumerate(arms):
        if not _LABEL.match(arm.label):
            raise ValidationFailed("arm label: letters, digits, _ . - (at most 64)", field=f"arms[{i}].label")
        if not 0 <= arm.weight <= 100:
            raise ValidationFailed("weight must be 0..100", field=f"arms[{i}].weight")
    total = sum(a.weight for a in arms)
    if total != 100:
        raise ValidationFailed(f"arm weights must sum to 100, not {total}", field="arms")


def check_feedback(score: int | None) -> None:
    if score is not None and score not in (-1, 1):
        raise ValidationFailed("feedback must be 1 (good) or -1 (bad)", field="feedback")


class EvolutionStore(ABC):
    """One interface over Postgres, SQLite and memory; `migrate` once before use."""

    @abstractmethod
    async def migrate(self) -> None: ...

    @abstractmethod
    async def _insert_version(self, kind: str, name: str, content: dict[str, Any], author: str,
                              note: str) -> Version: ...

    @abstractmethod
    async def versions(self, kind: str, name: str) -> list[Version]: ...

    @abstractmethod
    async def _get_version(self, kind: str, name: str, version: int) -> Version | None: ...

    @abstractmethod
    async def _set_active(self, kind: str, name: str, version: int) -> None: ...

    @abstractmethod
    async def _active_number(self, kind: str, name: str) -> int | None: ...

    @abstractmethod
    async def _insert_event(self, kind: str, name: str, action: str, *, version: int | None, author: str,
                            detail: dict[str, Any]) -> None: ...

    @abstractmethod
    async def events(self, kind: str | None = None, name: str | None = None,
                     limit: int = 100) -> list[EvolutionEvent]: ...

    @abstractmethod
    async def _insert_experiment(self, experiment: Experiment) -> None: ...

    @abstractmethod
    async def _get_experiment(self, experiment_id: str) -> Experiment | None: ...

    @abstractmethod
    async def _set_experiment_status(self, experiment_id: str, status: str) -> None: ...

    @abstractmethod
    async def _insert_outcome(self, experiment_id: str, arm: str, session_id: str, *, success: bool | None,
                              latency_ms: float | None, tokens: int | None, feedback: int | None) -> None: ...

    @abstractmethod
    async def _aggregate(self, experiment_id: str) -> list[dict[str, Any]]:
        """Per arm: arm, outcomes, successes, latency_sum, latency_count, tokens, up, down."""

    # shared behaviour ---------------------------------------------------------------------------
    async def add_version(self, kind: str, name: str, content: dict[str, Any], *, author: str,
                          note: str = "") -> Version:
        check_key(kind, name)
        check_text(author, "author")
        check_text(note, "note")
        if not isinstance(content, dict):
            raise ValidationFailed("content must be a JSON object", field="content")
        version = await self._insert_version(kind, name, content, author, note)
        await self._set_active(kind, name, version.version)
        await self._insert_event(kind, name, "version.added", version=version.version, author=author,
                                 detail={"contentHash": version.content_hash, "note": note})
        return version

    async def version(self, kind: str, name: str, version: int) -> Version:
        check_key(kind, name)
        found = await self._get_version(kind, name, version)
        if found is None:
            raise NotFound(f"{kind} {name!r} has no version {version}", field="version")
        return found

    async def active(self, kind: str, name: str) -> Version | None:
        check_key(kind, name)
        number = await self._active_number(kind, name)
        return None if number is None else await self._get_version(kind, name, number)

    async def rollback(self, kind: str, name: str, version: int, *, author: str) -> Version:
        check_text(author, "author")
        target = await self.version(kind, name, version)  # 404 before anything changes
        previous = await self._active_number(kind, name)
        await self._set_active(kind, name, version)
        await self._insert_event(kind, name, "rollback", version=version, author=author, detail={"from": previous})
        return target

    async def create_experiment(self, kind: str, name: str, arms: list[Arm], *, author: str) -> Experiment:
        check_key(kind, name)
        check_text(author, "author")
        check_arms(arms)
        for i, arm in enumerate(arms):
            if await self._get_version(kind, name, arm.version) is None:
                raise NotFound(f"{kind} {name!r} has no version {arm.version}", field=f"arms[{i}].version")
        experiment = Experiment(id=hashlib.sha256(f"{kind}:{name}:{time.time_ns()}".encode()).hexdigest()[:16],
                                kind=kind, name=name, arms=tuple(arms), status="running", author=author,
                                created_at=time.time())
        await self._insert_experiment(experiment)
        await self._insert_event(kind, name, "experiment.started", version=None, author=author,
                                 detail={"experiment": experiment.id, "arms": [a.to_json() for a in arms]})
        return experiment

    async def experiment(self, experiment_id: str) -> Experiment:
        found = None if "\x00" in experiment_id else await self._get_experiment(experiment_id)
        if found is None:
            raise NotFound(f"no experiment {experiment_id!r}", field="experiment_id")
        return found

    async def stop_experiment(self, experiment_id: str, *, author: str) -> Experiment:
        check_text(author, "author")
        experiment = await self.experiment(experiment_id)
        await self._set_experiment_status(experiment_id, "stopped")
        await self._insert_event(experiment.kind, experiment.name, "experiment.stopped", version=None,
                                 author=author, detail={"experiment": experiment_id})
        return await self.experiment(experiment_id)

    async def assign(self, experiment_id: str, session_id: str) -> Arm:
        experiment = await self.experiment(experiment_id)
        return assign_arm(experiment.id, session_id, experiment.arms)

    async def record_outcome(self, experiment_id: str, session_id: str, *, success: bool | None = None,
                             latency_ms: float | None = None, tokens: int | None = None,
                             feedback: int | None = None) -> Arm:
        """An outcome or user feedback of a session; the arm comes from the session, never the caller."""
        check_feedback(feedback)
        check_text(session_id, "session_id")
        if latency_ms is not None and latency_ms < 0:
            raise ValidationFailed("latencyMs must be >= 0", field="latencyMs")
        if tokens is not None and tokens < 0:
            raise ValidationFailed("tokens must be >= 0", field="tokens")
        experiment = await self.experiment(experiment_id)
        arm = assign_arm(experiment.id, session_id, experiment.arms)
        await self._insert_outcome(experiment_id, arm.label, session_id, success=success, latency_ms=latency_ms,
                                   tokens=tokens, feedback=feedback)
        return arm

    async def results(self, experiment_id: str) -> list[ArmResult]:
        experiment = await self.experiment(experiment_id)
        per_arm = {a.label: ArmResult(a.label, a.version) for a in experiment.arms}
        for row in await self._aggregate(experiment_id):
            result = per_arm.get(str(row["arm"]))
            if result is not None:
                result.outcomes, result.successes = int(row["outcomes"] or 0), int(row["successes"] or 0)
                result.latency_ms_total = float(row["latency_sum"] or 0.0)
                result.latency_count = int(row["latency_count"] or 0)
                result.tokens = int(row["tokens"] or 0)
                result.feedback_up, result.feedback_down = int(row["up"] or 0), int(row["down"] or 0)
        return list(per_arm.values())

    async def close(self) -> None:
        return None
