"""Layer 1.5's index: the embedded texts of every skill of an agent, scored against a query at once.

Each skill contributes a profile row (`description | keywords | capabilities`) and one row per
example utterance (more where the embedder has more rows for a searched text: the English +
other-languages composite gives an English text a second row in its other model, so that queries
in other languages find the skill; `embeddings.contract.SearchedRows`). Rows are stored grouped
by skill in one contiguous float32 matrix, so one matrix-vector product scores every row and
`np.maximum.reduceat` takes each skill's best row (or a padded view the mean of its top k), with
no Python loop per skill. A skill's score is the mean of that and the similarity to its centroid
(the normalised mean of its rows): on intent data (banking77, CLINC150) the blend ranks the right
skill first more often than either alone.

With more skills than `prefilter`, the centroids (skills x dim, small enough to stay in cache)
pick the `prefilter` nearest skills and only their rows are scored, however many skills there
are. Those rows are read without copying the ones of large skills
(`SkillIndex._rowwise`): a copy of ~100 rows x 64 skills cost more than the product itself.

Similarities are taken in a whitened space fitted when the index is built: the rows' mean is
subtracted and the shared within-skill covariance (how a skill's texts vary around their skill's
mean, pooled over skills, shrunk towards a multiple of the identity by `whitening`) is made the
identity, as a shared-covariance (LDA-style) classifier does. Directions along which every
skill's texts vary (wording, length, language) then weigh less than those that separate skills;
raw cosines of a small embedder are high even between unrelated texts. The query gets the same
transform (one dim x dim product). Too few texts to estimate the covariance, or an embedder with
more than MAX_WHITENED_DIM dimensions: raw cosines.

An embedder whose vectors each live in one block of columns (the composite: bge's, then e5's) gets
one such index per block (`BlockedIndex`), each over its block's rows and columns and whitened on
them alone; a query is scored by its own block's index.

With `classifier_c`, each SkillIndex also fits a multinomial logistic regression on its rows (in the
index's space; L2 penalty, `classifier_c` the inverse of its weight as in scikit-learn's C), in numpy
(`fit_classifier`), so that Layer 1.5 can read how probable the top skill is against all the others
(`SkillIndex.probability`: one skills x dim product per query). The fit costs rows x skills x dim per
step: it starts from the centroids' softmax at a fitted temperature and takes at most as many steps as
CLASSIFIER_WORK allows (converged within MAX_CLASSIFIER_STEPS up to a few hundred skills of ten
examples; at 1,000 such skills a few steps, the probabilities then closer to the centroids' softmax).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from strata_runtime.config.agents import SkillConfig
from strata_runtime.embeddings.contract import Embedder, EmbeddingUnavailable, embed_searched, vector_blocks

Vectors = npt.NDArray[np.float32]
Aggregation = Literal["max", "meanTopK"]
EMBED_BATCH = 256
MIN_RESIDUAL_ROWS = 8  # texts beyond one per skill needed to estimate the within-skill covariance
MAX_WHITENED_DIM = 1024  # the query's dim x dim product would cost more than the rest of routing
MAX_CLASSIFIER_STEPS = 300  # gradient steps of the logistic regression, at most
CLASSIFIER_TOLERANCE = 1e-5  # largest gradient entry (mean loss) at which the fit has converged
CLASSIFIER_WORK = 1e10  # rows x skills x dim x steps, at most (about 1 s on one core of the bench box)
TEMPERATURE_SAMPLE = 200_000  # rows x skills read to fit the starting temperature, at most


def profile_text(skill: SkillConfig) -> str:
    parts = [skill.description.strip(), ", ".join(k.strip() for k in skill.keywords if k.strip()),
             ", ".join(c.strip() for c in skill.capabilities if c.strip())]
    return " | ".join(p for p in parts if p)


def skill_texts(skill: SkillConfig) -> list[str]:
    """The texts embedded for a skill, without duplicates; empty for a skill with no text."""
    texts = [profile_text(skill), *(e.strip() for e in skill.examples)]
    return list(dict.fromkeys(t for t in texts if t))


@dataclass(frozen=True)
class SkillIndex:
    names: tuple[str, ...]  # indexed skills, in row-group order
    unindexed: tuple[str, ...]  # skills with no text to embed
    vectors: Vectors  # (rows, dim), grouped by skill, contiguous
    starts: npt.NDArray[np.int64]  # first row of each skill
    counts: npt.NDArray[np.int64]  # rows of each skill
    centroids: Vectors  # (skills, dim), normalised mean of each skill's rows
    shift: Vectors | None = None  # (dim,): subtracted before `transform`
    transform: Vectors | None = None  # (dim, dim) whitening; None: raw cosines
    weights: Vectors | None = None  # (skills, dim) logistic regression on the rows; None: not fitted
    bias: Vectors | None = None  # (skills,)
    _uniform: int = field(init=False, repr=False, compare=False, default=0)  # every skill's rows, if equal
    _blocks: Vectors | None = field(init=False, repr=False, compare=False, default=None)  # (skills, rows, dim)

    @property
    def rows(self) -> int:
        return int(self.vectors.shape[0])

    def __post_init__(self) -> None:
        counts = self.counts
        uniform = int(counts[0]) if len(counts) and bool((counts == counts[0]).all()) else 0
        object.__setattr__(self, "_uniform", uniform)
        # every skill with the same number of rows: a (skills, rows, dim) view of the same memory
        object.__setattr__(self, "_blocks", self.vectors.reshape(len(counts), uniform, -1) if uniform else None)

    def select(self, query: Vectors) -> tuple[SkillIndex, Vectors]:
        """The index that scores this query, and the query in its space (see BlockedIndex)."""
        return self, self.project(query)

    def project(self, query: Vectors) -> Vectors:
        """The query in the index's space (whitened and normalised, or as it is)."""
        if self.transform is None or self.shift is None:
            return query
        moved = (query - self.shift) @ self.transform
        norm = np.sqrt(np.add.reduce(moved * moved))  # as _whiten's row norm, without its 2-D overhead
        return np.asarray(moved / norm if norm > 1e-6 else moved, dtype=np.float32)

    def probability(self, query: Vectors, skill: int) -> float | None:
        """The classifier's probability of skill number `skill` for a projected query, against every
        skill of the index (None: no classifier fitted)."""
        if self.weights is None or self.bias is None:
            return None
        logits = self.weights @ query + self.bias
        logits = np.exp(logits - logits.max())
        return float(logits[skill] / logits.sum())

    def scores(self, query: Vectors, *, aggregation: Aggregation, top_k: int, prefilter: int
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(skill ids, their scores) for the skills scored, in no particular order.

        A skill's score is the mean of its row aggregate (max or mean of the top k) and its
        centroid similarity: the nearest example says which skill, the centroid damps a single
        look-alike example. With more skills than `prefilter`, only the `prefilter` skills whose
        centroids are nearest are scored row by row.
        """
        n = len(self.names)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        centroid = self.centroids @ query
        if prefilter <= 0 or n <= prefilter:
            ids = np.arange(n, dtype=np.int64)
            rowwise = _aggregate(self.vectors @ query, self.starts, self.counts, aggregation, top_k)
        else:
            ids = np.argpartition(-centroid, prefilter - 1)[:prefilter].astype(np.int64)
            rowwise = self._rowwise(query, ids, aggregation, top_k)
        return ids, np.asarray(0.5 * (rowwise + centroid[ids]), dtype=np.float32)

    def _rowwise(self, query: Vectors, ids: npt.NDArray[np.int64], aggregation: Aggregation, top_k: int
                 ) -> Vectors:
        """The row aggregate of the skills `ids` (in that order), reading only their rows.

        Skills of few rows are copied out together (one product over the copy; with equal row counts
        a copy of whole (rows, dim) blocks); skills of many rows are scored in place, one product per
        run of neighbouring skills (a gap of at most GAP_ROWS rows is scored rather than split on), so
        a prefilter that keeps most of the index costs one product over it, not a copy of it."""
        counts = self.counts[ids]
        if self._blocks is not None and self._uniform < SPAN_ROWS:
            # the same matrix and product as the general copy below, in whole blocks
            sims = (self._blocks[ids].reshape(-1, self.vectors.shape[1]) @ query).reshape(len(ids), -1)
            if aggregation == "max" or top_k <= 1:
                return np.asarray(sims.max(axis=1), dtype=np.float32)
            k = min(top_k, sims.shape[1])
            top = -np.partition(-sims, k - 1, axis=1)[:, :k]  # as `_aggregate`, which pads nothing here
            return np.asarray(top.sum(axis=1) / np.minimum(counts, k), dtype=np.float32)
        if int(counts.sum()) < SPAN_ROWS * len(ids):
            first = np.cumsum(counts) - counts
            rows = np.repeat(self.starts[ids] - first, counts) + np.arange(int(counts.sum()))
            return _aggregate(np.take(self.vectors, rows, axis=0) @ query, first, counts, aggregation, top_k)
        query = np.asarray(query, dtype=np.float32)  # np.dot's `out` takes the product's own type
        order = np.argsort(ids, kind="stable")
        chosen = ids[order]
        starts, ends = self.starts[chosen], self.starts[chosen] + self.counts[chosen]
        cuts = np.flatnonzero(starts[1:] - ends[:-1] > GAP_ROWS) + 1  # a run of skills ends before each cut
        run_starts = starts[np.concatenate(([0], cuts))].tolist()
        run_ends = ends[np.concatenate((cuts - 1, [len(chosen) - 1]))].tolist()
        sims = np.empty(sum(e - s for s, e in zip(run_starts, run_ends, strict=True)), dtype=np.float32)
        offset = 0
        shift = np.zeros(len(chosen), dtype=np.int64)  # run start in `sims` minus its start in the index
        for i, (s, e) in enumerate(zip(run_starts, run_ends, strict=True)):
            np.dot(self.vectors[s:e], query, out=sims[offset:offset + e - s])
            shift[int(cuts[i - 1]) if i else 0:] = offset - s
            offset += e - s
        result = np.empty(len(ids), dtype=np.float32)
        result[order] = _aggregate(sims, starts + shift, self.counts[chosen], aggregation, top_k, tiled=False)
        return result


@dataclass(frozen=True)
class BlockedIndex:
    """The index of an embedder whose vectors each live in one block of columns (the composite: an
    English text in bge's, any other in e5's): one SkillIndex per block, over the rows and columns of
    that block, whitened on its own. A query is scored by the index of its block alone: the other
    blocks' rows score exactly 0 against it anyway, and half the columns cost half the time."""

    names: tuple[str, ...]  # every indexed skill
    unindexed: tuple[str, ...]  # skills with no text to embed
    parts: tuple[tuple[int, int, SkillIndex], ...]  # (first column, end column, that block's index)

    def select(self, query: Vectors) -> tuple[SkillIndex, Vectors]:
        """The index of the block holding most of the query (all of it, for the composite)."""
        first, end, index = max(self.parts, key=lambda p: float(np.dot(query[p[0]:p[1]], query[p[0]:p[1]])))
        return index, index.project(np.ascontiguousarray(query[first:end]))


Index = SkillIndex | BlockedIndex

SPAN_ROWS = 32  # mean rows per skill from which scoring in place beats copying the rows out
GAP_ROWS = 64  # scoring this many unwanted rows costs about one more product call


def _aggregate(sims: Vectors, first: npt.NDArray[np.int64], counts: npt.NDArray[np.int64],
               aggregation: Aggregation, top_k: int, *, tiled: bool = True) -> Vectors:
    """Per skill, over its `counts` rows from `first` in `sims` (ascending and not overlapping; `tiled`:
    they also cover `sims` with no row between them): the best row, or the mean of the best `top_k`."""
    ends = first + counts
    if aggregation == "max" or top_k <= 1:
        if tiled:
            return np.asarray(np.maximum.reduceat(sims, first), dtype=np.float32)
        bounds = np.empty(2 * len(first), dtype=np.int64)  # [first, end) pairs; the rows between them dropped
        bounds[0::2], bounds[1::2] = first, ends
        if bounds[-1] == len(sims):
            bounds = bounds[:-1]
        return np.asarray(np.maximum.reduceat(sims, bounds)[0::2], dtype=np.float32)
    local = np.repeat(np.arange(len(counts)), counts)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    padded = np.full((len(counts), int(counts.max())), -np.inf, dtype=np.float32)
    padded[local, within] = sims[np.repeat(first, counts) + within]
    k = min(top_k, padded.shape[1])
    top = -np.partition(-padded, k - 1, axis=1)[:, :k]
    used = np.minimum(counts, k)
    return np.asarray(np.where(np.isfinite(top), top, 0.0).sum(axis=1) / used, dtype=np.float32)


def _check(vectors: Vectors, owners: npt.NDArray[np.intp], texts: int) -> Vectors:
    """The embedder's rows for `texts` texts: finite, one per owner, every text owning its first row."""
    if (vectors.ndim != 2 or vectors.shape[0] != len(owners) or len(owners) < texts
            or not np.array_equal(owners[:texts], np.arange(texts)) or (owners >= texts).any()
            or (owners < 0).any() or not np.isfinite(vectors).all()):
        raise EmbeddingUnavailable("the embedder returned vectors that are not finite or of the wrong shape")
    return vectors.astype(np.float32, copy=False)


async def build_index(skills: Sequence[SkillConfig], embedder: Embedder, *, whitening: float | None = None,
                      classifier_c: float | None = None) -> Index:
    """Embed every skill's texts, fit the whitening and, with `classifier_c`, the classifier (at
    registration, never per query; the numpy work runs in a worker thread, off the event loop)."""
    names: list[str] = []
    unindexed: list[str] = []
    texts: list[str] = []
    counts: list[int] = []
    for skill in skills:
        own = skill_texts(skill)
        if not own:
            unindexed.append(skill.name)
            continue
        names.append(skill.name)
        texts.extend(own)
        counts.append(len(own))
    skill_of_text = np.repeat(np.arange(len(names)), counts)
    parts: list[Vectors] = []
    skill_of_row: list[npt.NDArray[np.intp]] = []
    for start in range(0, len(texts), EMBED_BATCH):
        chunk = texts[start:start + EMBED_BATCH]
        vectors, owners = await embed_searched(embedder, chunk)
        parts.append(_check(vectors, owners, len(chunk)))
        skill_of_row.append(skill_of_text[start + owners])
    if not parts:
        return await asyncio.to_thread(index_from_vectors, names, unindexed,
                                       np.zeros((0, embedder.dimension), np.float32), counts, whitening=whitening,
                                       classifier_c=classifier_c)
    owner = np.concatenate(skill_of_row)
    order = np.argsort(owner, kind="stable")  # rows grouped by skill, each skill's texts in their order
    grouped, owner = np.concatenate(parts)[order], owner[order]
    splits = vector_blocks(embedder)
    if not splits:
        rows = np.bincount(owner, minlength=len(names)).tolist()
        return await asyncio.to_thread(index_from_vectors, names, unindexed, grouped, rows, whitening=whitening,
                                       classifier_c=classifier_c)
    return await asyncio.to_thread(_blocked_index, names, unindexed, grouped, owner, splits, whitening=whitening,
                                   classifier_c=classifier_c)


def _blocked_index(names: Sequence[str], unindexed: Sequence[str], vectors: Vectors, owner: npt.NDArray[np.intp],
                   splits: tuple[int, ...], *, whitening: float | None, classifier_c: float | None = None
                   ) -> BlockedIndex:
    """One index per block of columns, over the rows non-zero in it (a skill without any is not in it)."""
    edges = [0, *splits, vectors.shape[1]]
    parts: list[tuple[int, int, SkillIndex]] = []
    for first, end in itertools.pairwise(edges):
        part = vectors[:, first:end]
        mine = np.einsum("ij,ij->i", part, part) > 0.0
        counts = np.bincount(owner[mine], minlength=len(names))
        kept = np.flatnonzero(counts)
        index = index_from_vectors([names[int(i)] for i in kept], (), np.ascontiguousarray(part[mine]),
                                   counts[kept].tolist(), whitening=whitening, classifier_c=classifier_c)
        parts.append((first, end, index))
    return BlockedIndex(names=tuple(names), unindexed=tuple(unindexed), parts=tuple(parts))


def fit_whitening(vectors: Vectors, counts: npt.NDArray[np.int64], shrinkage: float
                  ) -> tuple[Vectors, Vectors] | None:
    """(shift, transform) making the shrunk pooled within-skill covariance the identity; None when the
    skills' texts are too few to estimate it (fewer than MIN_RESIDUAL_ROWS beyond one per skill) or the
    vectors too long for a per-query dim x dim product."""
    rows, dim = vectors.shape
    if rows - len(counts) < MIN_RESIDUAL_ROWS or dim == 0 or dim > MAX_WHITENED_DIM:
        return None
    data = vectors.astype(np.float64)
    starts = np.cumsum(counts) - counts
    means = np.add.reduceat(data, starts, axis=0) / counts[:, None]
    residuals = data - np.repeat(means, counts, axis=0)
    within = residuals.T @ residuals / (rows - len(counts))
    scale = float(np.trace(within)) / dim
    if not np.isfinite(scale) or scale <= 1e-12:
        return None
    shrunk = (1.0 - shrinkage) * within + shrinkage * scale * np.eye(dim)
    values, basis = np.linalg.eigh(shrunk)
    transform = (basis / np.sqrt(np.maximum(values, scale * 1e-6))) @ basis.T
    return data.mean(axis=0).astype(np.float32), np.ascontiguousarray(transform, dtype=np.float32)


def _whiten(vectors: Vectors, shift: Vectors, transform: Vectors) -> Vectors:
    moved = (vectors - shift) @ transform
    norms = np.linalg.norm(moved, axis=1, keepdims=True)
    return np.asarray(np.where(norms > 1e-6, moved / np.maximum(norms, 1e-6), moved), dtype=np.float32)


def fit_classifier(vectors: Vectors, counts: npt.NDArray[np.int64], centroids: Vectors, c: float, *,
                   max_steps: int = MAX_CLASSIFIER_STEPS, tolerance: float = CLASSIFIER_TOLERANCE,
                   work: float = CLASSIFIER_WORK) -> tuple[Vectors, Vectors] | None:
    """(weights (skills, dim), bias (skills,)) of a multinomial logistic regression of each row's skill,
    minimising the mean cross-entropy + |weights|^2 / (2 c rows) (scikit-learn's C = c; bias not
    penalised). Deterministic: it starts from the centroids' softmax, `centroids` times the temperature
    that fits the rows best (a golden-section search), then takes accelerated gradient steps (Nesterov's,
    restarted when they stop descending) of 1 / the gradient's Lipschitz bound, until no gradient entry
    exceeds `tolerance` or `max_steps`, or `work` (rows x skills x dim x steps) is spent. None if the
    result is not finite (the index then has no classifier)."""
    rows, dim = vectors.shape
    skills = len(counts)
    weights = np.zeros((dim, skills), np.float32)
    bias = np.zeros(skills, np.float32)
    if skills < 2 or rows == 0:  # one skill: probability 1, nothing to fit
        return np.ascontiguousarray(weights.T), bias
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    labels = np.repeat(np.arange(skills), counts)
    picked = (np.arange(rows), labels)
    penalty = 1.0 / (c * rows)
    squared = float((centroids * centroids).sum())

    every = max(1, rows * skills // TEMPERATURE_SAMPLE)  # the temperature is read on every `every`-th row
    sims = x[::every] @ centroids.T
    picked_sample = (np.arange(len(sims)), labels[::every])

    def loss_of(scale: float, sims: Vectors) -> float:
        z = scale * sims
        top = z.max(axis=1)
        lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
        return float((lse - z[picked_sample]).mean()) + float(0.5 * penalty * scale * scale * squared)

    lo, hi = 0.0, 100.0  # the temperature: golden-section search of the (convex in it) loss
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss_of(a, sims), loss_of(b, sims)
    for _ in range(16):  # the bracket shrinks to 100 * 0.618^17 < 0.03
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss_of(a, sims)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss_of(b, sims)
    del sims
    weights = np.ascontiguousarray((0.5 * (lo + hi)) * centroids.T, dtype=np.float32)
    # the Hessian is at most E[(diag p - p p^T) (x,1)(x,1)^T] <= 1/2 * 2 blockdiag(E[x x^T], 1)
    largest = float(np.linalg.eigvalsh((x.T.astype(np.float64) @ x) / rows)[-1])
    step_w, step_b = 1.0 / (largest + penalty), 1.0
    steps = int(min(max_steps, work // max(1, rows * skills * dim)))

    def gradient(w: Vectors, b: Vectors) -> tuple[Vectors, Vectors]:
        z = x @ w
        z += b
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        z[picked] -= 1.0
        z /= rows
        return x.T @ z + np.float32(penalty) * w, z.sum(axis=0)

    ahead_w, ahead_b, momentum = weights, bias, 1.0
    for _ in range(steps):
        grad_w, grad_b = gradient(ahead_w, ahead_b)
        if max(float(np.abs(grad_w).max()), float(np.abs(grad_b).max())) <= tolerance:
            weights, bias = ahead_w, ahead_b
            break
        next_w = ahead_w - np.float32(step_w) * grad_w
        next_b = ahead_b - np.float32(step_b) * grad_b
        if float(np.vdot(grad_w, next_w - weights)) + float(np.vdot(grad_b, next_b - bias)) > 0.0:
            momentum = 1.0  # the momentum points uphill: restart it
        following = (1.0 + np.sqrt(1.0 + 4.0 * momentum * momentum)) / 2.0
        pull = np.float32((momentum - 1.0) / following)
        ahead_w, ahead_b = next_w + pull * (next_w - weights), next_b + pull * (next_b - bias)
        weights, bias, momentum = next_w, next_b, following
    if not (np.isfinite(weights).all() and np.isfinite(bias).all()):
        return None
    return np.ascontiguousarray(weights.T, dtype=np.float32), np.asarray(bias, dtype=np.float32)


def index_from_vectors(names: Sequence[str], unindexed: Sequence[str], vectors: Vectors,
                       counts: Sequence[int], *, whitening: float | None = None,
                       classifier_c: float | None = None) -> SkillIndex:
    count_array = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(count_array) - count_array
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    fitted = fit_whitening(vectors, count_array, whitening) if whitening is not None and len(names) else None
    if fitted is not None:
        vectors = _whiten(vectors, *fitted)
    centroids = np.zeros((len(names), dim), dtype=np.float32)
    if len(names):
        sums = np.add.reduceat(vectors.astype(np.float32), starts, axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = np.where(norms > 1e-6, sums / np.maximum(norms, 1e-6), 0.0).astype(np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    classifier = (fit_classifier(vectors, count_array, centroids, classifier_c)
                  if classifier_c is not None and len(names) else None)
    return SkillIndex(names=tuple(names), unindexed=tuple(unindexed),
                      vectors=np.ascontiguousarray(vectors, dtype=np.float32), starts=starts, counts=count_array,
                      centroids=np.ascontiguousarray(centroids), shift=fitted[0] if fitted else None,
                      transform=fitted[1] if fitted else None, weights=classifier[0] if classifier else None,
                      bias=classifier[1] if classifier else None)
