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


async def build_index(skills: Sequence[SkillConfig], embedder: Embedder, *, whitening: float | None = None
                      ) -> Index:
    """Embed every skill's texts and fit the whitening (at registration, never per query; the numpy
    work runs in a worker thread, off the event loop)."""
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
                                       np.zeros((0, embedder.dimension), np.float32), counts, whitening=whitening)
    owner = np.concatenate(skill_of_row)
    order = np.argsort(owner, kind="stable")  # rows grouped by skill, each skill's texts in their order
    grouped, owner = np.concatenate(parts)[order], owner[order]
    splits = vector_blocks(embedder)
    if not splits:
        rows = np.bincount(owner, minlength=len(names)).tolist()
        return await asyncio.to_thread(index_from_vectors, names, unindexed, grouped, rows, whitening=whitening)
    return await asyncio.to_thread(_blocked_index, names, unindexed, grouped, owner, splits, whitening=whitening)


def _blocked_index(names: Sequence[str], unindexed: Sequence[str], vectors: Vectors, owner: npt.NDArray[np.intp],
                   splits: tuple[int, ...], *, whitening: float | None) -> BlockedIndex:
    """One index per block of columns, over the rows non-zero in it (a skill without any is not in it)."""
    edges = [0, *splits, vectors.shape[1]]
    parts: list[tuple[int, int, SkillIndex]] = []
    for first, end in itertools.pairwise(edges):
        part = vectors[:, first:end]
        mine = np.einsum("ij,ij->i", part, part) > 0.0
        counts = np.bincount(owner[mine], minlength=len(names))
        kept = np.flatnonzero(counts)
        index = index_from_vectors([names[int(i)] for i in kept], (), np.ascontiguousarray(part[mine]),
                                   counts[kept].tolist(), whitening=whitening)
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


def index_from_vectors(names: Sequence[str], unindexed: Sequence[str], vectors: Vectors,
                       counts: Sequence[int], *, whitening: float | None = None) -> SkillIndex:
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
    return SkillIndex(names=tuple(names), unindexed=tuple(unindexed),
                      vectors=np.ascontiguousarray(vectors, dtype=np.float32), starts=starts, counts=count_array,
                      centroids=np.ascontiguousarray(centroids), shift=fitted[0] if fitted else None,
                      transform=fitted[1] if fitted else None)
