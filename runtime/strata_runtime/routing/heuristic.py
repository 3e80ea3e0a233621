"""Layer 1: a heuristic complexity score in [0, 1]; below the policy's threshold → direct chat.

score = length.weight * min(1, words / length.fullAtWords) + Σ weight of every feature whose
pattern occurs in the message, capped at 1. Words are whitespace-separated tokens, and every
CJK character counts as one word (Chinese has no spaces). The features, weights, patterns and
threshold all come from the policy. A low score alone does not decide: the router first checks the
message against the skills' distinctive terms (`terms.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from strata_runtime.config.policies import HeuristicRoutingConfig

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def word_count(message: str) -> int:
    cjk = len(_CJK.findall(message))
    return cjk + len(_CJK.sub(" ", message).split())


@dataclass(frozen=True)
class Complexity:
    features: tuple[tuple[str, re.Pattern[str], float], ...]
    length_weight: float
    full_at_words: int
    threshold: float

    @classmethod
    def from_config(cls, config: HeuristicRoutingConfig) -> Complexity:
        features = tuple((f.name, re.compile(f.pattern, re.IGNORECASE), f.weight) for f in config.features)
        return cls(features=features, length_weight=config.length.weight,
                   full_at_words=config.length.full_at_words, threshold=config.low_complexity_below)

    def score(self, message: str) -> tuple[float, list[str]]:
        """(score, names of the features that fired)."""
        total = self.length_weight * min(1.0, word_count(message) / self.full_at_words)
        fired = [name for name, pattern, _ in self.features if pattern.search(message)]
        total += sum(weight for name, _, weight in self.features if name in fired)
        return min(1.0, total), fired

    def is_low(self, message: str) -> tuple[bool, float, list[str]]:
        score, fired = self.score(message)
        return score < self.threshold, score, fired
