"""Layer 1.5's decision: the best-scoring skill and its zone.

The zone is decided on a confidence. `confidence: scoreAndLead` (the default): the top skill's score
plus `marginWeight` times its lead over the runner-up (capped at 1). `scoreAndProbability`: the mean
of the top skill's score and its probability under the index's logistic regression (fitted on the
skills' texts when they are indexed: `index.fit_classifier`), the probability taken against every
skill of the index, prefiltered or not; an index without a classifier falls back to the lead. A query
close to two skills is not sure of either, however similar it is to both: the lead and the
probability both say so. The probability ranks right and wrong top skills apart better on most of
the benchmark's intent sets, but with `routing fit`'s thresholds it routes less Chinese without an
LLM call, so it is not the default (bench/README.md, "Skill routing").
confidence > high → that skill, no LLM call;
low ≤ confidence ≤ high → the skill is passed to Layer 2 as a hint; below low → Layer 2
unchanged. `high`/`low` are the policy's, or the skill's own where `routing fit` calibrated them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strata_runtime.config.policies import SemanticRoutingConfig
from strata_runtime.routing.decision import Candidate
from strata_runtime.routing.index import Index, Vectors

CANDIDATES = 5


@dataclass(frozen=True)
class Zone:
    zone: str  # high | hint | low | none
    skill: str | None
    score: float  # the confidence the zone was decided on
    candidates: tuple[Candidate, ...]  # with their own scores, best first


def index_options(config: SemanticRoutingConfig) -> dict[str, float | None]:
    """The keywords `build_index` takes from the policy: the whitening, and the classifier's C when the
    confidence uses its probability (no classifier is fitted otherwise)."""
    return {"whitening": config.whitening,
            "classifier_c": config.classifier_c if config.confidence == "scoreAndProbability" else None}


class SemanticLayer:
    def __init__(self, config: SemanticRoutingConfig):
        self.config = config
        self._per_skill = {t.name: (t.low, t.high) for t in config.skills}

    def thresholds(self, skill: str) -> tuple[float, float]:
        return self._per_skill.get(skill, (self.config.low, self.config.high))

    def zone(self, index: Index, query: Vectors) -> Zone:
        scored, projected = index.select(query)  # a blocked index: the query's block's
        ids, scores = scored.scores(projected, aggregation=self.config.aggregation, top_k=self.config.top_k,
                                   prefilter=self.config.prefilter_skills)
        if len(ids) == 0:
            return Zone("none", None, 0.0, ())
        take = min(CANDIDATES, len(ids))
        best = np.argpartition(-scores, take - 1)[:take]
        best = best[np.argsort(-scores[best], kind="stable")]
        candidates = tuple(Candidate(scored.names[int(ids[i])], float(scores[i])) for i in best)
        top = candidates[0]
        probability = (scored.probability(projected, int(ids[best[0]]))
                       if self.config.confidence == "scoreAndProbability" else None)
        if probability is not None:
            confidence = 0.5 * (top.score + probability)
        else:
            lead = top.score - candidates[1].score if len(candidates) > 1 else 0.0
            confidence = min(1.0, top.score + self.config.margin_weight * lead)
        low, high = self.thresholds(top.skill)
        if confidence > high:
            return Zone("high", top.skill, confidence, candidates)
        if confidence >= low:
            return Zone("hint", top.skill, confidence, candidates)
        return Zone("low", None, confidence, candidates)
