"""Fitting Layer 1.5 thresholds from labelled messages (`strata-runtime routing fit`).

For each labelled message we know the top skill, its score and the right answer (a skill, or
none for out-of-scope). `high` is the lowest threshold above which routing straight to the
top skill keeps the target precision at that threshold *and every higher one* (precision is
not monotone in the threshold). Per skill, precision is estimated with a prior: the skill's
own counts plus `prior` pseudo-observations at the global precision, so a skill with few
labelled messages stays near the global threshold and one with many gets its own. `low` is
the score that `hint_recall` of correctly-ranked messages reach, so L2 gets the right hint for
most of them.

Minimum support. A precision measured on few lines cannot tell the target from a single error:
with target 0.97, one wrong line among the 33 most confident already reads 0.9697, and since
`high` must hold at every higher threshold, that one line would push `high` above nearly every
message. So a set above a threshold is judged as holding at least `m = ceil(1 / (1 - target))`
lines (34 for 0.97, 50 for 0.98; `min_lines`), the lines it lacks counted as right: precision is
`1 - errors / max(lines, m)`. Fewer than m lines can therefore hold one error and pass, never
two; from m lines on this is the plain ratio, and a set that grows past m with its errors keeps
failing. This global precision is also the per-skill prior, so a miss among the most confident
lines no longer drags every skill's threshold up with it; a skill's own counts are taken as they
are (its `prior` pseudo-observations already keep a skill of few lines near the global estimate,
and a miss at the top of a skill still raises that skill's `high` above it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

GRID = np.round(np.linspace(0.0, 1.0, 401), 4)  # 0.0025 steps


@dataclass(frozen=True)
class Scored:
    top: str | None  # the top skill (None: no skill indexed)
    score: float
    label: str | None  # the right skill; None = out of scope


@dataclass(frozen=True)
class Fit:
    low: float
    high: float
    skills: dict[str, tuple[float, float]]  # skill -> (low, high)


@dataclass(frozen=True)
class Report:
    items: int
    in_scope: int
    coverage: float  # share of all messages routed above high (no LLM call)
    accuracy: float  # right skill among those
    top1: float  # top skill right, over in-scope messages
    oos_high: float  # share of out-of-scope messages routed above high


def _monotone_threshold(ok: npt.NDArray[np.bool_]) -> float:
    """The lowest grid threshold from which `ok` holds all the way up (1.0: none)."""
    bad = np.flatnonzero(~ok)
    if len(bad) == 0:
        return float(GRID[0])
    return float(GRID[bad[-1] + 1]) if bad[-1] + 1 < len(GRID) else 1.0


def min_lines(target: float) -> int:
    """The fewest lines whose precision can hold one error and still reach `target`."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target precision must be between 0 and 1 (exclusive), not {target}")
    return math.ceil(round(1.0 / (1.0 - target), 6))


def _precision(lines: npt.NDArray[np.float64], errors: npt.NDArray[np.float64], support: int
               ) -> npt.NDArray[np.float64]:
    """Precision of each set, judged as holding at least `support` lines (the missing ones right)."""
    return np.asarray(1.0 - errors / np.maximum(lines, float(support)), dtype=np.float64)


def _counts(scores: npt.NDArray[np.float64], right: npt.NDArray[np.bool_]
            ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    above = scores[None, :] > GRID[:, None]
    return above.sum(axis=1).astype(np.float64), (above & right[None, :]).sum(axis=1).astype(np.float64)


def fit(items: Sequence[Scored], *, target: float = 0.97, prior: float = 30.0, hint_recall: float = 0.95,
        min_support: int = 5) -> Fit:
    scored = [i for i in items if i.top is not None]
    if not scored:
        raise ValueError("no labelled message could be scored (are any skills indexed?)")
    scores = np.array([i.score for i in scored], dtype=np.float64)
    right = np.array([i.top == i.label for i in scored])
    support = min_lines(target)
    n, c = _counts(scores, right)
    global_precision = _precision(n, n - c, support)
    high = _monotone_threshold(global_precision >= target)
    low = min(high, _hint_floor(scores[right], hint_recall, default=high))
    skills: dict[str, tuple[float, float]] = {}
    tops = np.array([i.top for i in scored])
    for skill in sorted({i.top for i in scored if i.top is not None}):
        mine = tops == skill
        n_s, c_s = _counts(scores[mine], right[mine])
        estimate = (c_s + prior * global_precision) / (n_s + prior)
        skill_high = _monotone_threshold(estimate >= target)
        correct = scores[mine & right]
        skill_low = _hint_floor(correct, hint_recall, default=low) if len(correct) >= min_support else low
        skills[skill] = (round(min(skill_low, skill_high), 4), round(skill_high, 4))
    return Fit(low=round(low, 4), high=round(high, 4), skills=skills)


def _hint_floor(correct_scores: npt.NDArray[np.float64], recall: float, *, default: float) -> float:
    if len(correct_scores) == 0:
        return default
    return float(np.floor(np.quantile(correct_scores, 1.0 - recall) * 400) / 400)


def report(items: Sequence[Scored], thresholds: Fit) -> Report:
    """Coverage and accuracy of Layer 1.5 alone with these thresholds."""
    high_of = {skill: h for skill, (_, h) in thresholds.skills.items()}
    routed = [i for i in items if i.top is not None and i.score > high_of.get(i.top, thresholds.high)]
    in_scope = [i for i in items if i.label is not None]
    oos = [i for i in items if i.label is None]
    return Report(
        items=len(items), in_scope=len(in_scope),
        coverage=len(routed) / len(items) if items else 0.0,
        accuracy=sum(i.top == i.label for i in routed) / len(routed) if routed else 1.0,
        top1=sum(i.top == i.label for i in in_scope) / len(in_scope) if in_scope else 0.0,
        oos_high=sum(1 for i in routed if i.label is None) / len(oos) if oos else 0.0,
    )
