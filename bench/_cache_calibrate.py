"""Fit and measure the semantic cache's verifier (bench/cache.py calibrate [--fit]).

Probes:
* banking77 (cache-like): every sentence of a sample is stored, each one asks; the nearest
  stored entries (top 5, cosine order) are offered to the verifier and the first accepted one
  is served. Right hit: same intent; wrong hit: another intent. Rates are per probe.
* PAWS (paws-wiki-en, paws-x-zh): one pair is one probe: `a` is stored, `b` asks. A positive
  served is a correct hit; a negative served (same words, other meaning) is a wrong hit.

* clinc150, hwu64, massive-en, massive-zh: cache-like like banking77, on a sample of their test
  split. Those not in FITTED_INTENTS are never fitted on (measure-only columns: how the verifier
  fares on question sets it has not seen); those in it are fitted on a sample of their train split.

* mrpc, lcqmc, afqmc, oppo-xiaobu, sts-b-zh (outside pair sets, read from `--pairs DIR`): pair
  probes like PAWS on a seeded sample; measure-only by default (research-use or unlicensed data is
  not fitted into the shipped parameters); `--fit-on NAME` fits on one's even-crc32 half in a
  parameters file of one's own.

Fitting uses the fitting halves only (banking77 train.csv, the train split of FITTED_INTENTS,
PAWS pairs with an even crc32); the table is measured on the other halves (test splits, odd crc32).
`fitted` (default FITTED: banking77, massive-zh, paws-wiki-en, paws-x-zh) names the sources the fit reads:
`--leave-out NAME` drops one of them, to measure on a source of a kind the fit has not seen.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench._calibration_data import (
    EXTERNAL_PAIR_SETS,
    FITTED,
    FULL,
    INTENT_SETS,
    PAIR_SETS,
    Sizes,
    VectorCache,
    all_texts,
    external_available,
    external_pairs,
    external_splits,
    intent_rows,
    intent_splits,
    paws_pairs,
)

RATES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
MARGIN = 0.85  # aim under the target on the fitting data: held-back rates are noisier
TOP_K = 5
MIN_GROUP = 300  # probes needed to fit a separate model for long questions


@dataclass
class Probe:
    """One question and its candidates (cached text, cosine, is-right), in cosine order."""

    source: str
    query: str
    candidates: list[tuple[str, float, bool]]
    positive: bool  # a right answer exists among candidates / the pair is a paraphrase


@dataclass
class Probes:
    items: list[Probe] = field(default_factory=list)

    def by_source(self) -> dict[str, list[Probe]]:
        out: dict[str, list[Probe]] = {}
        for p in self.items:
            out.setdefault(p.source, []).append(p)
        return out


def intent_probes(name: str, split: str, limit: int, vectors: VectorCache) -> list[Probe]:
    rows = intent_rows(name, split, limit)
    if not rows:
        return []
    texts = [t for t, _ in rows]
    labels = [c for _, c in rows]
    m = vectors.matrix(texts)
    sims = m @ m.T
    np.fill_diagonal(sims, -2.0)
    order = np.argsort(-sims, axis=1)[:, :TOP_K]
    probes = []
    for i in range(len(rows)):
        cands = [(texts[j], float(sims[i, j]), labels[j] == labels[i]) for j in order[i]]
        probes.append(Probe(name, texts[i], cands, True))
    return probes


def pair_probes(name: str, split: str, vectors: VectorCache, limit: int | None = None,
                external: bool = False) -> list[Probe]:
    """One probe per pair: `a` stored, `b` asks (PAWS halves, or an outside set's sample)."""
    probes = []
    for p in external_pairs(name, split, limit or 0) if external else paws_pairs(name, split, limit):
        cos = float(vectors.vectors[p.a] @ vectors.vectors[p.b])
        probes.append(Probe(name, p.b, [(p.a, cos, p.same)], p.same))
    return probes


def load_probes(split: str, vectors: VectorCache, sizes: Sizes = FULL,
                fitted: tuple[str, ...] = FITTED, external: tuple[str, ...] = ()) -> Probes:
    """The fitting probes (split "train": the `fitted` sources only) or the measured ones ("test":
    every source, fitted or not: held-back halves, test splits, outside samples)."""
    items: list[Probe] = []
    for name in INTENT_SETS:
        if split in intent_splits(name, fitted):
            items += intent_probes(name, split, sizes.rows(name, split), vectors)
    for name in PAIR_SETS:
        if split == "test" or name in fitted:
            items += pair_probes(name, split, vectors, sizes.pairs)
    for name in external:
        parts = external_splits(name, fitted)
        part = split if split in parts else "all" if split == "test" else None
        if part is not None:
            items += pair_probes(name, part, vectors, sizes.external, external=True)
    return Probes(items)


Decide = Callable[[str, str, float], bool]


def serve(probe: Probe, decide: Decide) -> bool | None:
    """None: miss; True: a right hit; False: a wrong hit."""
    for text, cos, right in probe.candidates:
        if decide(probe.query, text, cos):
            return right
    return None


def rates(probes: list[Probe], decide: Decide) -> tuple[float, float, int, int]:
    """(correct-hit rate over positive probes, wrong-hit rate over negative probes, n_pos, n_neg).

    banking77 probes are all positive (a same-intent entry is stored) and a wrong hit is counted
    over all of them; PAWS probes are positive or negative pairs.
    """
    pos = [p for p in probes if p.positive]
    neg = [p for p in probes if not p.positive] or pos
    right = sum(1 for p in pos if serve(p, decide) is True)
    wrong = sum(1 for p in neg if serve(p, decide) is False)
    return right / max(len(pos), 1), wrong / max(len(neg), 1), len(pos), len(neg)


# fitting ------------------------------------------------------------------------------------


def fit(vectors: VectorCache, embedder: str, out: Path, sizes: Sizes = FULL,
        fitted: tuple[str, ...] = FITTED, *, external: tuple[str, ...] = ()) -> dict[str, object]:
    from strata_runtime.cache import guard, verifier

    train = load_probes("train", vectors, sizes, fitted, external)
    assert {p.source for p in train.items} <= set(fitted)  # never a measure-only or left-out set
    assert not any(p.source in EXTERNAL_PAIR_SETS and p.source not in fitted for p in train.items)
    languages: dict[str, object] = {}
    groups = _groups(train.items)
    empty = [key for key, probes in groups.items() if not any(right for p in probes for *_, right in p.candidates)]
    if empty:  # the runtime needs a model per language (else no verifier at all: cosine + guard only)
        raise ValueError(f"no {empty[0]} fitting data left in {', '.join(fitted)}: fit on another source of "
                         f"that language too (--fit-on, e.g. lcqmc for Chinese, mrpc for English)")
    for key, probes in groups.items():
        pos_cos = [c for p in probes for _, c, right in p.candidates if right]
        recall = float(np.percentile(pos_cos, 2))
        x, y = [], []
        for p in probes:
            for text, cos, right in p.candidates:
                if cos >= recall:
                    x.append(verifier.features(p.query, text, cos))
                    y.append(int(right))
        mean, scale, weights, bias = verifier.fit_logistic(x, y)
        # Two candidates: the logistic model over every feature, and cosine alone (its first feature);
        # keep the one that serves more right answers at the default target on the fitting data.
        cosine_only = (1.0, *([0.0] * (len(weights) - 1)))
        best: tuple[float, object] | None = None
        for name, w, b in (("features", tuple(weights), bias), ("cosine", cosine_only, 0.0)):
            draft = verifier.LanguageModel(recall, tuple(mean), tuple(scale), w, b, ())
            model = verifier.LanguageModel(recall, tuple(mean), tuple(scale), w, b,
                                           _thresholds(probes, draft, guard.check))
            v = verifier.Verifier({"en": model, "zh": model}, 0.01)
            right = rates(probes, lambda q, c, cos, v=v: v.check(q, c, cos).allowed)[0]
            print(f"fitted {key} ({name}): recall cosine {recall:.3f}, {len(x)} pairs, right at 0.01 {right:.3f}, "
                  f"thresholds {model.thresholds}", file=sys.stderr)
            if best is None or right > best[0]:
                best = (right, model)
        assert best is not None and isinstance(best[1], verifier.LanguageModel)
        lang = key.removesuffix("-long")
        short = verifier.LanguageModel.from_json(languages[lang]) if key != lang and lang in languages else None
        model = _shape_cosines(probes, best[1], guard.check, fallback=short)
        assert isinstance(model, verifier.LanguageModel)
        print(f"fitted {key}: near-duplicate cosines {model.near}, rewording cosines {model.reworded}", file=sys.stderr)
        languages[key] = model.to_json()
    params = {
        "about": "written by bench/cache.py calibrate --fit; do not edit by hand",
        "features": list(verifier.FEATURES),
        "margin": MARGIN,
        "fitted_on": list(fitted),
        "embedders": {embedder: {"languages": languages}},
    }
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing.setdefault("embedders", {}).update(params.pop("embedders"))  # type: ignore[attr-defined]
    existing.update(params)
    out.write_text(json.dumps(existing, indent=1, sort_keys=True) + "\n")
    return existing


def _groups(items: list[Probe]) -> dict[str, list[Probe]]:
    """Probes per model: a language, split into short and long questions when both have data."""
    from strata_runtime.cache import verifier

    groups: dict[str, list[Probe]] = {}
    for lang in ("en", "zh"):
        probes = [p for p in items if verifier.language(p.query) == lang]
        long = [p for p in probes if len(verifier.tokens(p.query)) > verifier.LONG_TOKENS[lang]]
        short = [p for p in probes if len(verifier.tokens(p.query)) <= verifier.LONG_TOKENS[lang]]
        if min(len(long), len(short)) >= MIN_GROUP:
            groups[lang], groups[f"{lang}-long"] = short, long
        else:
            groups[lang] = probes
    return groups


def _thresholds(
    probes: list[Probe], model: object, guard_check: Callable[[str, str], object]
) -> tuple[tuple[float, float], ...]:
    """For each target rate, the lowest score threshold keeping every source's wrong-hit rate
    at or under MARGIN x target on the fitting probes."""
    from strata_runtime.cache import verifier

    assert isinstance(model, verifier.LanguageModel)
    scored: dict[str, list[tuple[Probe, list[float]]]] = {}
    for p in probes:
        scores = [_score(model, p.query, text, cos, guard_check) for text, cos, _ in p.candidates]
        scored.setdefault(p.source, []).append((p, scores))
    grid = sorted({round(s, 4) for items in scored.values() for _, ss in items for s in ss if s >= 0} | {1.0})
    out = []
    for rate in RATES:
        chosen = 1.0
        for t in grid:
            if all(_wrong_rate(items, t) <= rate * MARGIN for items in scored.values()):
                chosen = t
                break
        out.append((rate, chosen))
    return tuple(out)


def _score(model: object, query: str, cached: str, cosine: float, guard_check: Callable[[str, str], object]) -> float:
    """A candidate's score as the runtime sees it: -1 under recall or vetoed by the guard, 1 for the
    same question (served without scoring), else the model's score."""
    from strata_runtime.cache import verifier

    assert isinstance(model, verifier.LanguageModel)
    if cosine < model.recall or not getattr(guard_check(query, cached), "allowed", False):
        return -1.0
    if verifier.same_question(query, cached):
        return 1.0
    return model.score(verifier.features(query, cached, cosine))


SHAPE_GRID = tuple(round(0.95 + 0.0025 * i, 4) for i in range(21))  # cosines 0.95 ... 1.0
# A shape's cosine is fitted only when the fitting data holds at least this many look-alikes of that
# shape it could serve (past recall and the guard, refused by the model, cosine on the grid): with none,
# every cosine on the grid "keeps" the wrong-hit rate and the lowest is chosen, a bound that nothing
# tested (long English had no look-alike of either shape, and served MRPC's added clauses at 0.95).
MIN_SHAPE_NEGATIVES = 1
Row = tuple[float, bool, float, "str | None"]  # cosine, passes recall + guard, model score, edit shape


def _shape_cosines(probes: list[Probe], model: object, guard_check: Callable[[str, str], object],
                   fallback: object = None) -> object:
    """The model with, for each target rate, the lowest cosine at which near duplicates, then
    rewordings, may also be served (on top of the model's own threshold for that rate) with every
    source's wrong-hit rate still at or under MARGIN x target on the fitting probes; 2.0 (never)
    when no cosine keeps that. A shape the probes hold fewer than MIN_SHAPE_NEGATIVES look-alikes of
    is untested here: it takes the `fallback` model's cosine for that rate (the same language's short
    questions, for the long-question model), or never."""
    from strata_runtime.cache import verifier

    assert isinstance(model, verifier.LanguageModel)
    seen: dict[str, list[tuple[Probe, list[Row]]]] = {}
    for p in probes:
        rows: list[Row] = []
        for text, cos, _ in p.candidates:
            score = _score(model, p.query, text, cos, guard_check)
            ok = score >= 0
            rows.append((cos, ok, score, verifier.shape(p.query, text) if ok else None))
        seen.setdefault(p.source, []).append((p, rows))
    near, reworded = [], []
    for rate, threshold in model.thresholds:
        cosines = {"near": 2.0, "reworded": 2.0}
        for name in cosines:
            if shape_negatives(seen, threshold, name) < MIN_SHAPE_NEGATIVES:  # untested here
                if isinstance(fallback, verifier.LanguageModel):
                    cosines[name] = fallback.shape_cosines(rate)[name]
                continue
            for c in SHAPE_GRID:
                trial = {**cosines, name: c}
                if all(_wrong_rate(_served(items, threshold, trial), 0.0) <= rate * MARGIN for items in seen.values()):
                    cosines[name] = c
                    break
        near.append((rate, cosines["near"]))
        reworded.append((rate, cosines["reworded"]))
    return dataclasses.replace(model, near=tuple(near), reworded=tuple(reworded))


def shape_negatives(seen: dict[str, list[tuple[Probe, list[Row]]]], threshold: float, shape: str) -> int:
    """Look-alikes (wrong candidates) of this shape a shape cosine on the grid could serve: past recall
    and the guard, refused by the model at this threshold, cosine at or above the grid's lowest."""
    return sum(1 for items in seen.values() for p, rows in items
               for (_, _, right), (cos, ok, score, s) in zip(p.candidates, rows, strict=True)
               if not right and ok and s == shape and cos >= SHAPE_GRID[0] and score < min(threshold, 1.0))


def _served(items: list[tuple[Probe, list[Row]]], threshold: float,
            cosines: dict[str, float]) -> list[tuple[Probe, list[float]]]:
    """Each candidate as 1.0 (the verifier serves it) or -1.0, for _wrong_rate."""
    def one(row: Row) -> float:
        cos, ok, score, shape = row
        served = ok and ((threshold < 1.0 and score >= threshold) or score >= 1.0
                         or (shape is not None and cos >= cosines[shape]))
        return 1.0 if served else -1.0
    return [(p, [one(r) for r in rows]) for p, rows in items]


def _wrong_rate(items: list[tuple[Probe, list[float]]], t: float) -> float:
    neg = [(p, s) for p, s in items if not p.positive] or items
    wrong = 0
    for p, scores in neg:
        for (_, _, right), s in zip(p.candidates, scores, strict=True):
            if s >= t:
                wrong += 0 if right else 1
                break
    return wrong / max(len(neg), 1)


# the table ------------------------------------------------------------------------------------


def table(vectors: VectorCache, embedder: str, params_path: Path, sizes: Sizes = FULL,
          fitted: tuple[str, ...] = FITTED, *, external: tuple[str, ...] = ()) -> list[dict[str, object]]:
    from strata_runtime.cache import verifier

    test = load_probes("test", vectors, sizes, fitted, external).by_source()
    rows: list[dict[str, object]] = []
    settings: list[tuple[str, Decide]] = []
    for t in (0.90, 0.93, 0.95, 0.97):
        settings.append((f"cosine >= {t:.2f} + guard, no moved word",
                         lambda q, c, cos, t=t: cos >= t and verifier.check_unverified(q, c).allowed))
    verifier._load_params.cache_clear()
    for rate in (0.005, 0.01, 0.02, 0.05):
        v = verifier.verifier_for(embedder, rate, params_path)
        if v is None:
            continue
        settings.append((f"verifier maxWrongHitRate {rate}", lambda q, c, cos, v=v: v.check(q, c, cos).allowed))
    for name, decide in settings:
        row: dict[str, object] = {"bench": "cache_calibration", "embedder": embedder, "setting": name}
        for source, probes in test.items():
            right, wrong, n_pos, n_neg = rates(probes, decide)
            row[source] = {
                "correct_hit_rate": round(right, 4),
                "wrong_hit_rate": round(wrong, 4),
                "positives": n_pos,
                "negatives": n_neg,
                "fitted": source in fitted,  # False: a set the fit never read
            }
        rows.append(row)
    return rows


def fitted_sources(leave_out: tuple[str, ...] = (), fit_on: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The sources a fit reads: the default ones less `leave_out`, plus outside pair sets `fit_on`."""
    unknown = [n for n in leave_out if n not in FITTED] + [n for n in fit_on if n not in EXTERNAL_PAIR_SETS
                                                            or n in FITTED]
    if unknown:
        raise ValueError(f"cannot leave out / fit on {unknown[0]!r}: fitted sources are {', '.join(FITTED)}, "
                         f"outside pair sets {', '.join(EXTERNAL_PAIR_SETS)}")
    fitted = tuple(n for n in FITTED if n not in leave_out) + tuple(dict.fromkeys(fit_on))
    if not fitted:
        raise ValueError("nothing left to fit on")
    return fitted


def run(fit_first: bool, embedder: str = "multilingual-e5-small", sizes: Sizes = FULL,
        params_path: Path | None = None, fitted: tuple[str, ...] = FITTED, *,
        external: tuple[str, ...] | None = None) -> list[dict[str, object]]:
    """Fit (when asked) and measure. `params_path` None: the shipped parameters beside the verifier;
    the smoke pass fits a small sample into a file of its own and never touches those; a fit on
    other sources than the default ones must name its own file. `external`: the outside pair sets
    to measure (None: those found under the pairs directory)."""
    from strata_runtime.cache.verifier import PARAMS_PATH
    from strata_runtime.embeddings.local import LOCAL_MODEL

    if embedder not in LOCAL_MODEL:
        raise ValueError(f"calibration runs a local embedder ({', '.join(LOCAL_MODEL)}), not {embedder!r}")
    local = LOCAL_MODEL[embedder]
    embedder = local.name  # the verifier's parameters are looked up by the runtime embedder's name
    path = params_path or PARAMS_PATH
    if fit_first and tuple(fitted) != FITTED and path == PARAMS_PATH:
        raise ValueError("a fit on other sources than the shipped ones writes to its own file (--params-out)")
    external = external_available() if external is None else external
    missing = [n for n in fitted if n in EXTERNAL_PAIR_SETS and n not in external]
    if missing:
        raise ValueError(f"{missing[0]!r} is not under the pairs directory (--pairs DIR)")
    vectors = VectorCache(local.vectors_key)
    missing = [t for t in all_texts(sizes, fitted, external) if t not in vectors.vectors]
    if missing:
        model = local.load(1, None)
        print(f"embedding {len(missing)} calibration sentences (cached for next time)...", file=sys.stderr)
        vectors.fill(missing, model.encode)
    if fit_first:
        fit(vectors, embedder, path, sizes, fitted, external=external)
    return table(vectors, embedder, path, sizes, fitted, external=external)
