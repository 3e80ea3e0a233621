"""What the router decided for one message, in the shape `/internal/route` and the query response return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Route = Literal["direct", "skill", "reject"]
Layer = Literal["L0", "L1", "L1.5", "L2"]


@dataclass(frozen=True)
class Candidate:
    skill: str
    score: float


@dataclass(frozen=True)
class RouteDecision:
    route: Route
    layer: Layer
    skill: str | None = None
    confidence: float = 1.0
    hint: str | None = None  # the L1.5 candidate passed to L2 (middle zone)
    candidates: tuple[Candidate, ...] = ()
    reason: str = ""  # why this layer decided (for logs and debugging, not a contract)

    def public(self) -> dict[str, Any]:
        return {"route": self.route, "skill": self.skill, "layer": self.layer,
                "confidence": round(float(self.confidence), 4), "hint": self.hint,
                "candidates": [{"skill": c.skill, "score": round(float(c.score), 4)} for c in self.candidates]}

    def summary(self) -> dict[str, Any]:
        """The part stored on the session turn."""
        return {"route": self.route, "skill": self.skill, "layer": self.layer,
                "confidence": round(float(self.confidence), 4)}

