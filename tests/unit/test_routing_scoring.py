"""L1.5's scoring against a straightforward reference: every row scored, each skill's max or mean of its top k,
blended with its centroid similarity, on random and adversarial indexes.

`SkillIndex.scores` reads only the rows of the skills it scores, in whichever way is cheapest (a copy of
few rows, whole blocks of equal-sized skills, products over runs of neighbouring skills in place); the
scores and the decisions built on them must not depend on which.
"""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt
import pytest

from strata_runtime.config.policies import SemanticRoutingConfig
from strata_runtime.routing.index import GAP_ROWS, SPAN_ROWS, Aggregation, SkillIndex, index_from_vectors
from strata_runtime.routing.semantic import CANDIDATES, SemanticLayer

pytestmark = pytest.mark.unit

TOL = 1e-5  # float32 rounding of products taken over different row ranges


def reference(index: SkillIndex, query: npt.NDArray[np.float64], aggregation: Aggregation, top_k: int
              ) -> npt.NDArray[np.float64]:
    """Every skill's score, one skill at a time, in float64."""
    vectors = index.vectors.astype(np.float64)
    out = []
    for skill, (start, count) in enumerate(zip(index.starts.tolist(), index.counts.tolist(), strict=True)):
        sims = np.sort(vectors[start:start + count] @ query)[::-1]
        rowwise = sims[0] if aggregation == "max" or top_k <= 1 else sims[:min(top_k, count)].mean()
        centroid = vectors[start:start + count].sum(axis=0)
        norm = np.linalg.norm(centroid)
        centroid = centroid / norm if norm > 1e-6 else np.zeros_like(centroid)
        assert np.allclose(centroid, index.centroids[skill], atol=1e-5)
        out.append(0.5 * (rowwise + float(index.centroids[skill].astype(np.float64) @ query)))
    return np.asarray(out)


def random_index(rng: np.random.Generator, counts: list[int], dim: int, *, whitening: float | None,
                 clustered: bool = True, duplicates: bool = False) -> tuple[SkillIndex, npt.NDArray[np.float32]]:
    """The index and the vectors it was built from (before whitening)."""
    centers = rng.standard_normal((len(counts), dim))
    vectors = (np.repeat(centers, counts, axis=0) if clustered else 0) + rng.standard_normal((sum(counts), dim))
    if duplicates:  # pairs of skills with the same texts (ties between skills), and rows repeated within one
        for i in range(0, len(counts) - 1, 2):
            if counts[i] == counts[i + 1]:
                start = sum(counts[:i])
                vectors[start + counts[i]:start + 2 * counts[i]] = vectors[start:start + counts[i]]
        vectors[1:3] = vectors[0]
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    names = [f"s{i}" for i in range(len(counts))]
    return index_from_vectors(names, [], vectors, counts, whitening=whitening), vectors


def queries(rng: np.random.Generator, vectors: npt.NDArray[np.float32], n: int) -> list[npt.NDArray[np.float32]]:
    """Embedder-side query vectors: one of the indexed texts', near one (a clear winner, close runners-up),
    or anywhere."""
    out = [vectors[int(rng.integers(len(vectors)))].copy()]
    for i in range(n):
        q = rng.standard_normal(vectors.shape[1]).astype(np.float32)
        if i % 2:
            q = vectors[int(rng.integers(len(vectors)))] + 0.3 * q / np.sqrt(vectors.shape[1])
        out.append(np.asarray(q / np.linalg.norm(q), dtype=np.float32))
    return out


def check(index: SkillIndex, raw: npt.NDArray[np.float32], aggregation: Aggregation, top_k: int,
          prefilters: tuple[int, ...]) -> None:
    """`raw`: the query as the embedder returns it (the index whitens it)."""
    query = index.project(raw)
    expected = reference(index, query.astype(np.float64), aggregation, top_k)
    n = len(index.names)
    for prefilter in prefilters:
        ids, scores = index.scores(query, aggregation=aggregation, top_k=top_k, prefilter=prefilter)
        assert ids.dtype == np.int64 and scores.dtype == np.float32
        if prefilter <= 0 or n <= prefilter:
            assert sorted(ids.tolist()) == list(range(n))
        else:  # the `prefilter` skills of nearest centroid (any of those tied at the boundary)
            assert len(ids) == prefilter == len(set(ids.tolist()))
            centroid = index.centroids @ query
            left_out = np.setdiff1d(np.arange(n), ids)
            assert centroid[ids].min() >= centroid[left_out].max()
        np.testing.assert_allclose(scores, expected[ids], atol=TOL, rtol=0)

        # the decision built on them: the same top skills, scores and confidence as from the reference scores
        layer = SemanticLayer(SemanticRoutingConfig.model_validate(
            {"aggregation": aggregation, "topK": top_k, "prefilterSkills": prefilter, "low": 0.3, "high": 0.6}))
        zone = layer.zone(index, raw)
        best = np.sort(expected[ids])[::-1][:CANDIDATES]
        np.testing.assert_allclose([c.score for c in zone.candidates], best, atol=TOL, rtol=0)
        for c in zone.candidates:  # each candidate's score is its own skill's, whichever of tied skills it is
            assert abs(c.score - expected[index.names.index(c.skill)]) <= TOL
        lead = best[0] - best[1] if len(best) > 1 else 0.0
        assert zone.score == pytest.approx(min(1.0, best[0] + lead), abs=2 * TOL)


SHAPES = {
    "equal small skills (whole blocks copied)": lambda rng: [11] * 300,
    "unequal small skills (rows copied)": lambda rng: rng.integers(1, 12, 300).tolist(),
    "one row each": lambda rng: [1] * 200,
    "equal large skills (runs in place)": lambda rng: [SPAN_ROWS + 8] * 90,
    "unequal large skills, gaps above and below GAP_ROWS": lambda rng: rng.integers(1, 3 * GAP_ROWS, 120).tolist(),
    "large skills among one-row ones": lambda rng: [1 if i % 3 else 150 for i in range(150)],
    "few skills (no prefilter)": lambda rng: rng.integers(1, 40, 20).tolist(),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("whitening", [None, 0.8])
def test_scores_match_the_reference_for_every_layout(shape: str, whitening: float | None) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{shape} {whitening}".encode()))
    counts = SHAPES[shape](rng)
    for clustered, duplicates in ((True, False), (False, True)):
        index, vectors = random_index(rng, counts, 24, whitening=whitening, clustered=clustered,
                                      duplicates=duplicates)
        for query in queries(rng, vectors, 6):
            combos: tuple[tuple[Aggregation, int], ...] = (("max", 3), ("meanTopK", 3), ("meanTopK", 1),
                                                           ("meanTopK", 50))
            for aggregation, top_k in combos:
                check(index, query, aggregation, top_k, (0, 16, 64, len(counts) - 1, len(counts)))


def test_prefilter_keeping_nearly_every_skill_of_many_rows() -> None:
    """banking77 with all its examples: 65 skills of ~100 rows, 64 kept: in place, no copy of the index."""
    rng = np.random.default_rng(7)
    index, vectors = random_index(rng, rng.integers(60, 160, 65).tolist(), 48, whitening=0.8)
    for query in queries(rng, vectors, 10):
        check(index, query, "max", 3, (64,))
        check(index, query, "meanTopK", 3, (64,))


def test_every_skill_tied() -> None:
    """Every row the same vector: every skill scores the same; the zone's top is one of them, its lead 0."""
    vectors = np.tile(np.asarray([[0.6, 0.8, 0.0]], np.float32), (3 * 40, 1))
    index = index_from_vectors([f"s{i}" for i in range(40)], [], vectors, [3] * 40)
    query = np.asarray([0.6, 0.8, 0.0], np.float32)
    for prefilter in (0, 8):
        check(index, query, "max", 3, (prefilter,))
        _, scores = index.scores(query, aggregation="max", top_k=3, prefilter=prefilter)
        assert np.allclose(scores, 1.0)
