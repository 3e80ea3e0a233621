"""Session state as the memory layers see it: turns with sequence numbers, plus a checkpoint.

Every message of a session (user or assistant) is a *turn* with its own sequence number.
A conversation exchange reserves two numbers at once: the user turn at ``n`` and the
assistant turn at ``n + 1``. Sequence numbers make every write idempotent (a turn is stored
under its number, so a retried write lands on the same slot) and give the resumable stream
its event ids (``<assistant seq>:<chunk index>``).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Role = Literal["user", "assistant"]

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


@dataclass(frozen=True)
class Turn:
    seq: int
    role: Role
    content: str
    ts: float
    turn_id: str = ""
    routing: dict[str, Any] | None = None  # a user turn's routing decision {route, skill, layer, confidence}

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"seq": self.seq, "role": self.role, "content": self.content, "ts": self.ts,
                                "id": self.turn_id}
        if self.routing is not None:
            data["routing"] = self.routing
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Turn:
        data = orjson.loads(raw)
        return cls(seq=int(data["seq"]), role=data["role"], content=data["content"], ts=float(data["ts"]),
                   turn_id=str(data.get("id", "")), routing=data.get("routing"))

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "role": self.role, "content": self.content, "ts": self.ts}
        if self.routing is not None:
            out["routing"] = self.routing
        return out


@dataclass
class ArchiveProgress:
    """This pod's back-off for a session's archive (not persisted: a restart simply retries)."""

    failures: int = 0
    retry_at: float = 0.0
    draft: tuple[str, str] | None = None  # (batch id, summary): a retry reuses it, no second LLM call


@dataclass
class SessionState:
    """What one pod knows about a session. ``turns`` is the L2 turn buffer (not yet archived)."""

    tenant: str
    session_id: str
    agent_id: str
    next_seq: int = 0
    summary: str = ""
    archived_upto: int = -1
    archived_batches: int = 0
    turns: dict[int, Turn] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)
    last_used: float = field(default_factory=time.monotonic)
    archive: ArchiveProgress = field(default_factory=ArchiveProgress)

    def adopt(self, fresh: SessionState) -> None:
        """Take `fresh`'s contents (the session as L2 has it) in place: other requests of the session
        hold this object."""
        self.__dict__.update(fresh.__dict__)

    def buffered(self) -> list[Turn]:
        return [self.turns[s] for s in sorted(self.turns)]

    def complete_prefix(self) -> list[Turn]:
        """Buffered turns before the first assistant turn still being produced: what may be archived."""
        stop = min(self.pending) if self.pending else None
        return [t for t in self.buffered() if stop is None or t.seq < stop - 1]

    def checkpoint_fields(self) -> dict[str, str]:
        return {"agent": self.agent_id, "next_seq": str(self.next_seq), "summary": self.summary,
                "archived_upto": str(self.archived_upto), "archived_batches": str(self.archived_batches)}

    def to_spill(self) -> bytes:
        return orjson.dumps({"checkpoint": self.checkpoint_fields(),
                             "turns": [orjson.loads(t.to_json()) for t in self.buffered()]})

    @classmethod
    def from_checkpoint(cls, tenant: str, session_id: str, ckpt: dict[str, str], turns: list[Turn],
                        pending: set[int] | None = None) -> SessionState:
        return cls(tenant=tenant, session_id=session_id, agent_id=ckpt.get("agent", ""),
                   next_seq=int(ckpt.get("next_seq", "0") or 0), summary=ckpt.get("summary", ""),
                   archived_upto=int(ckpt.get("archived_upto", "-1") or -1),
                   archived_batches=int(ckpt.get("archived_batches", "0") or 0),
                   turns={t.seq: t for t in turns}, pending=set(pending or ()))

    @classmethod
    def from_spill(cls, tenant: str, session_id: str, raw: bytes | str) -> SessionState:
        data = orjson.loads(raw)
        turns = [Turn(seq=int(t["seq"]), role=t["role"], content=t["content"], ts=float(t["ts"]),
                      turn_id=str(t.get("id", ""))) for t in data["turns"]]
        return cls.from_checkpoint(tenant, session_id, {k: str(v) for k, v in data["checkpoint"].items()}, turns)


def batch_id(tenant: str, agent_id: str, session_id: str, first_seq: int, last_seq: int) -> str:
    """Deterministic primary key of one archived batch: a retried archive hits the same row."""
    raw = "\x1f".join((tenant, agent_id, session_id, str(first_seq), str(last_seq)))
    return "b_" + hashlib.sha256(raw.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class StreamInfo:
    """Progress of one assistant turn being produced (the stream record in L2)."""

    seq: int
    state: str  # producing | done | failed
    owner: str
    heartbeat: float
    prompt: bytes
    model: str
    chunks: list[str]
    error: str = ""
