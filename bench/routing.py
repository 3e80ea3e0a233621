"""Semantic routing benchmark: JSON lines on stdout, a human table on stderr.

    .venv/bin/python -m bench.routing [--banking DIR] [--clinc FILE] [--hwu DIR] [--massive DIR] [--cais DIR]
                                      [--only SETS] [--examples 10|all] [--cross-fit]
                                      [--calibration 20] [--target 0.97] [--queries-per-intent N]
                                      [--whitening W|none] [--confidence C] [--cv] [--cache FILE]
                                      [--overhead 1000x10]
                                      [--embedder NAME] [--smoke]

Each intent data set is split the way a user would split it: every in-scope intent becomes a
skill (description = its label in words, `examples` = the first N utterances of its train
split, or with `--examples all` every one but its calibration lines); `routing fit` thresholds are
fitted on other train utterances (+ out-of-scope ones);
queries come from the test split, out-of-scope queries included. Data sets without
out-of-scope queries (banking77, HWU64, MASSIVE, CAIS) hold out a seeded 15% of their intents: those
intents' train utterances are the out-of-scope calibration lines and their test utterances the
out-of-scope queries. Every query goes through the runtime's Router (the same code path as a
real query) with the runtime's default embedder (`--embedder NAME`: another local one); the
classifier (L2) is off, so a decision at L2 shows as "needs an LLM call". Printed per data set:
coverage decided without an LLM call and its accuracy, L1.5 top-1 accuracy over in-scope queries,
out-of-scope queries routed to a skill at high confidence, and what became of the messages L1
finds simple (`l1_simple`: sent to chat at
L1, or passed on to L1.5 for sharing a skill term). Then the routing overhead excluding the embedding
(the query vector comes from a lookup) at 1,000 skills x 10 examples (`--overhead`: other sizes),
p50/p99 over 2,000 queries, and p50 of 1,000 short messages (half chit-chat, sent to chat at L1; half
sharing a skill's term).

`--cv` instead prints, per data set, the L1.5 top-1 accuracy of each `whitening` shrinkage by 5-fold
cross-validation over the skills' examples alone (train split; no test query is read): how the
default was chosen. `--whitening none` routes on raw cosine similarities (the scoring before it).
`--confidence scoreAndLead` decides the zones on the score and lead (the confidence before the
classifier's probability); the overhead records also give the index's build time.

Data: banking77 (CC BY 4.0; `text,category` CSVs), CLINC150 `data_full.json` (clinc/oos-eval,
CC BY 3.0), HWU64 (xliuhw/NLU-Evaluation-Data, CC BY 4.0; `text,category` CSVs, held out: nothing
was chosen on it) and MASSIVE 1.0 (Amazon, CC BY 4.0; the same utterances in zh-CN and en-US, data
sets `massive-zh` and `massive-en`: Chinese against English like for like; `massive-en-zh`: skills
with English examples, Chinese calibration lines and queries, routing across languages), all in bench/data;
CAIS (Chinese; `ch.{train,valid,test}` + `.intent` from GitHub Adaxry/CM-Net, released with Liu et
al., EMNLP 2019, no licence file: measurement only, not redistributed), with `--cais DIR`.
`--only SETS` runs those data sets alone. `--cross-fit`: each intent's calibration lines are also
its skill's examples (N + calibration per skill); `routing fit`'s scoring takes them out of fold.
`--queries-per-intent N` draws at most N test queries per intent (out-of-scope ones in the same
share); `--cache FILE` keeps the embeddings between runs.
`--smoke` (make test): a 4-skill English + Chinese set written in this file, and 50 skills for
the overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import random
import re
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
sys.path.insert(0, str(ROOT))

from strata_runtime.config.agents import AgentConfig, SkillConfig  # noqa: E402
from strata_runtime.config.policies import RoutingPolicySpec  # noqa: E402
from strata_runtime.config.runtime import EmbedderConfig  # noqa: E402
from strata_runtime.embeddings.contract import Embedder, embed_searched, rows_and_owners, rows_of_each  # noqa: E402
from strata_runtime.embeddings.factory import build_embedder  # noqa: E402
from strata_runtime.embeddings.local import LOCAL_MODEL, LocalModel  # noqa: E402
from strata_runtime.gateway.contract import CallContext  # noqa: E402
from strata_runtime.routing.calibrate import fit  # noqa: E402
from strata_runtime.routing.cli import score_with  # noqa: E402
from strata_runtime.routing.index import index_from_vectors, profile_text, skill_texts  # noqa: E402
from strata_runtime.routing.router import MAX_EMBED_CHARS, Router  # noqa: E402
from strata_runtime.routing.semantic import SemanticLayer  # noqa: E402

Pair = tuple[str, str]
SEED = 13
CTX = CallContext(tenant="bench", agent_id="bench")


def emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


@dataclass
class Dataset:
    name: str
    language: str
    train: list[Pair]
    test: list[Pair]
    oos_train: list[str] = field(default_factory=list)
    oos_test: list[str] = field(default_factory=list)
    # the traffic's wording of each train line, line for line (another language): calibration lines
    # come from it, the skills' examples from `train`
    traffic_train: list[Pair] | None = None


def load_csv(path: Path, name: str, language: str = "en") -> Dataset:
    def rows(split: str) -> list[Pair]:
        with open(path / split, newline="", encoding="utf-8") as f:
            return [(r["text"], r["category"]) for r in csv.DictReader(f)]

    return hold_out(Dataset(name, language, rows("train.csv"), rows("test.csv")))


def load_banking(path: Path) -> Dataset:
    return load_csv(path, "banking77")


def load_hwu(path: Path) -> Dataset:
    return load_csv(path, "hwu64")


def load_massive_zh(path: Path) -> Dataset:
    """MASSIVE's zh-CN locale; the same intents are held out as for en-US (same names, same seed)."""
    return load_csv(path / "zh-CN", "massive-zh", "zh")


def load_massive_en(path: Path) -> Dataset:
    """MASSIVE's en-US locale: the English original of the zh-CN utterances, line for line."""
    return load_csv(path / "en-US", "massive-en", "en")


def load_massive_en_zh(path: Path) -> Dataset:
    """Skills written in English (en-US examples), traffic in Chinese (zh-CN calibration lines and
    queries, the same utterances translated): routing across languages."""
    en, zh = load_massive_en(path), load_massive_zh(path)
    if [i for _, i in en.train] != [i for _, i in zh.train]:
        raise ValueError("MASSIVE en-US and zh-CN train splits are not line for line")
    return Dataset("massive-en-zh", "en→zh", en.train, zh.test, zh.oos_train, zh.oos_test, traffic_train=zh.train)


def load_clinc(path: Path) -> Dataset:
    data = json.loads(path.read_text(encoding="utf-8"))
    return Dataset("clinc150", "en", [(t, i) for t, i in data["train"]], [(t, i) for t, i in data["test"]],
                   oos_train=[t for t, _ in data["oos_train"] + data["oos_val"]],
                   oos_test=[t for t, _ in data["oos_test"]])


def load_cais(path: Path) -> Dataset:
    def rows(split: str) -> list[Pair]:
        sentences = [
            "".join(line.split(" ")[0] for line in block.splitlines() if line.strip())
            for block in (path / f"ch.{split}").read_text(encoding="utf-8").split("\n\n") if block.strip()
        ]
        intents = [i.strip() for i in (path / f"ch.{split}.intent").read_text(encoding="utf-8").splitlines()]
        return list(zip(sentences, intents, strict=False))

    return hold_out(Dataset("cais", "zh", rows("train") + rows("valid"), rows("test")))


def hold_out(ds: Dataset, share: float = 0.15) -> Dataset:
    """Out-of-scope queries for a data set without any: a seeded share of its intents is unknown."""
    intents = sorted({i for _, i in ds.train})
    held = set(random.Random(SEED).sample(intents, max(1, round(len(intents) * share))))
    ds.oos_train = [t for t, i in ds.train if i in held]
    ds.oos_test = [t for t, i in ds.test if i in held]
    ds.train = [(t, i) for t, i in ds.train if i not in held]
    ds.test = [(t, i) for t, i in ds.test if i not in held]
    return ds


def cap_queries(ds: Dataset, per_intent: int) -> Dataset:
    """At most `per_intent` test queries per intent and as many out-of-scope ones as an intent (seeded draw)."""
    rng = random.Random(SEED)
    share = len(ds.oos_test) / max(1, len(ds.test) + len(ds.oos_test))
    by_intent: dict[str, list[str]] = defaultdict(list)
    for text, intent in ds.test:
        by_intent[intent].append(text)
    ds.test = [(t, i) for i, texts in sorted(by_intent.items())
               for t in rng.sample(texts, min(per_intent, len(texts)))]
    wanted = max(per_intent, round(share / (1 - share) * len(ds.test)))
    ds.oos_test = rng.sample(ds.oos_test, min(len(ds.oos_test), wanted))
    return ds


def smoke_dataset() -> Dataset:
    """A tiny English + Chinese set in the repository (a smoke run uses no outside data)."""
    train = {
        "card_arrival": ["when will my new card arrive", "my card has not come yet", "我的新卡什么时候到"],
        "exchange_rate": ["what is the exchange rate for euros", "how much is a dollar in yen", "今天的汇率是多少"],
        "lost_card": ["i lost my card", "my card was stolen", "我的银行卡丢了"],
        "write_article": ["write an article about AI", "draft a blog post on climate", "生成一篇关于AI的文章"],
    }
    test = [("has my card been shipped yet", "card_arrival"), ("卡还没寄到", "card_arrival"),
            ("convert 100 pounds to euros", "exchange_rate"), ("美元兑人民币汇率", "exchange_rate"),
            ("someone stole my debit card", "lost_card"), ("信用卡被偷了", "lost_card"),
            ("write a short essay about robots", "write_article"), ("写一篇关于机器学习的文章", "write_article"),
            ("lost card", "lost_card"), ("汇率", "exchange_rate")]  # short: past L1 by a skill term
    return Dataset("smoke", "en+zh", [(t, i) for i, texts in train.items() for t in texts], test,
                   oos_train=["what is the weather tomorrow", "明天天气怎么样"],
                   oos_test=["play some jazz music", "给我讲个笑话", "thanks", "你好"])


def label_words(intent: str) -> str:
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", intent)
    return spaced.replace("_", " ").lower()


Labelled = list[tuple[str, str | None]]


def split(ds: Dataset, examples: int | None, calibration: int) -> tuple[list[SkillConfig], Labelled]:
    """Per intent (seeded shuffle): the first `examples` train utterances are its skill's examples and the
    next `calibration` ones labelled lines for `routing fit`. `examples=None` ("all"): the intent keeps
    `calibration` lines for the fit (at most half of its train utterances) and every other one is an example."""
    by_intent: dict[str, list[tuple[str, str]]] = defaultdict(list)  # (example wording, traffic wording)
    for (text, intent), (asked, _) in zip(ds.train, ds.traffic_train or ds.train, strict=True):
        by_intent[intent].append((text, asked))
    rng = random.Random(SEED)
    skills: list[SkillConfig] = []
    labelled: Labelled = []
    for intent in sorted(by_intent):
        texts = by_intent[intent][:]
        rng.shuffle(texts)
        n = len(texts) - min(calibration, len(texts) // 2) if examples is None else examples
        skills.append(SkillConfig(name=intent, description=label_words(intent), examples=[t for t, _ in texts[:n]]))
        labelled += [(asked, intent) for _, asked in texts[n:n + calibration]]
    oos = ds.oos_train[:]
    rng.shuffle(oos)
    labelled += [(t, None) for t in oos[:max(calibration * 3, len(skills))]]
    return skills, labelled


class LookupEmbedder:
    """Vectors computed in one batch beforehand, served by text: the router's code path, minus the model."""

    def __init__(self, name: str, dimension: int, vectors: dict[str, npt.NDArray[np.float32]],
                 extra_rows: dict[str, npt.NDArray[np.float32]] | None = None, blocks: tuple[int, ...] = ()):
        self.name = name
        self.dimension = dimension
        self.vectors = vectors
        self.extra_rows = extra_rows or {}  # searched text -> its rows beyond the first (SearchedRows)
        self.blocks = blocks
        self._by_stripped: dict[str, npt.NDArray[np.float32]] = {}

    async def embed_searched(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
        firsts = await self.embed(texts)
        empty = np.zeros((0, self.dimension), np.float32)
        return rows_and_owners([np.vstack([first, self.extra_rows.get(t, empty)]) for first, t in zip(
            firsts, texts, strict=True)], self.dimension)

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> npt.NDArray[np.float32]:
        # the router embeds a message stripped (and cut): find it under the text it came from
        return np.stack([self.vectors[t] if t in self.vectors else self._stripped()[t] for t in texts])

    def _stripped(self) -> dict[str, npt.NDArray[np.float32]]:
        if len(self._by_stripped) != len(self.vectors):
            self._by_stripped = {t.strip()[:MAX_EMBED_CHARS] or " ": v for t, v in self.vectors.items()}
        return self._by_stripped

    async def close(self) -> None:
        return None


EMBED_CACHE: list[Path] = []  # --cache: vectors kept across runs (keyed by embedder and text)
EMBEDDER: list[str] = []  # --embedder: a local model (default: the runtime's default embedder)


def load_cache(name: str) -> dict[str, npt.NDArray[np.float32]]:
    if not EMBED_CACHE or not EMBED_CACHE[0].exists():
        return {}
    with np.load(EMBED_CACHE[0], allow_pickle=False) as data:
        if str(data["embedder"]) != name:
            return {}
        return dict(zip((str(t) for t in data["texts"]), data["vectors"], strict=True))


def save_cache(name: str, vectors: dict[str, npt.NDArray[np.float32]]) -> None:
    if EMBED_CACHE and vectors:
        np.savez(EMBED_CACHE[0], embedder=np.array(name), texts=np.array(list(vectors)),
                 vectors=np.stack(list(vectors.values())))


def bench_model() -> LocalModel:
    """The local model the benchmark embeds with (--embedder, else the runtime's default)."""
    return LOCAL_MODEL[EMBEDDER[0] if EMBEDDER else EmbedderConfig().model]


class Embedded(NamedTuple):
    name: str
    dimension: int
    vectors: dict[str, npt.NDArray[np.float32]]  # text -> its `embed` vector
    extra_rows: dict[str, npt.NDArray[np.float32]]  # searched text -> its rows beyond the first, if any

    def lookup(self) -> LookupEmbedder:
        return LookupEmbedder(self.name, self.dimension, self.vectors, self.extra_rows, LOCAL_MODEL[self.name].blocks)


async def embed_all(texts: list[str], searched: Sequence[str] = ()) -> Embedded:
    """Every text's vector, and the extra rows of the `searched` ones (skill texts, as the router's
    index embeds them), with one embedder; both kept in the --cache file(s)."""
    model = bench_model()
    embedder = build_embedder(EmbedderConfig(timeout_seconds=60, model=model.name), {})
    try:
        extra = await _extra_rows(embedder, model, searched)
        cached = load_cache(model.vectors_key)
        out = {t: cached[t] for t in texts if t in cached}
        missing = [t for t in dict.fromkeys(texts) if t not in out]
        for i in range(0, len(missing), 64):
            chunk = missing[i:i + 64]
            for text, vec in zip(chunk, await embedder.embed(chunk), strict=True):
                out[text] = vec
            if i % 1024 == 960 or i + 64 >= len(missing):  # an interrupted run keeps what it embedded
                save_cache(model.vectors_key, {**cached, **out})
        return Embedded(model.name, model.dimension, out, extra)
    finally:
        await embedder.close()


async def _extra_rows(embedder: Embedder, model: LocalModel, texts: Sequence[str]
                      ) -> dict[str, npt.NDArray[np.float32]]:
    """The rows beyond the first the embedder gives searched texts (the composite's other-languages
    rows of English texts), kept in `<--cache>.searched.npz`: every text asked is recorded, with no
    rows when it has none."""
    path = EMBED_CACHE[0].with_suffix(".searched.npz") if EMBED_CACHE else None
    known: dict[str, npt.NDArray[np.float32]] = {}
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as data:
            if str(data["embedder"]) == model.vectors_key:  # each array read once (not once per text)
                owners, vectors, asked = data["owners"], data["vectors"], data["asked"]
                order = np.argsort(owners, kind="stable")
                cuts = np.searchsorted(owners[order], np.arange(1, len(asked)))
                known = {str(t): rows for t, rows in zip(asked, np.split(vectors[order], cuts), strict=True)}
    missing = [t for t in dict.fromkeys(texts) if t not in known]
    for start in range(0, len(missing), 64):
        chunk = missing[start:start + 64]
        for text, rows in zip(chunk, rows_of_each(*await embed_searched(embedder, chunk), len(chunk)), strict=True):
            known[text] = rows[1:]
    if path is not None and missing:
        asked = list(known)
        flat = [(n, row) for n, t in enumerate(asked) for row in known[t]]
        np.savez(path, embedder=np.array(model.vectors_key), asked=np.array(asked),
                 owners=np.array([n for n, _ in flat], dtype=np.intp),
                 vectors=np.stack([r for _, r in flat]) if flat else np.zeros((0, model.dimension), np.float32))
    return {t: known[t] for t in texts if len(known[t])}


WHITENING: list[float | None] = [RoutingPolicySpec().semantic.whitening]  # --whitening
CONFIDENCE: list[str] = [RoutingPolicySpec().semantic.confidence]  # --confidence


def policy_with(fitted: dict[str, tuple[float, float]] | None, low: float, high: float, *,
                heuristic: bool = True) -> RoutingPolicySpec:
    """The default policy with these thresholds and no classifier (L2 shows as "needs an LLM call")."""
    skills = [{"name": n, "low": lo, "high": hi} for n, (lo, hi) in (fitted or {}).items()]
    return RoutingPolicySpec.model_validate({"classifier": {"enabled": False}, "heuristic": {"enabled": heuristic},
                                             "semantic": {"low": low, "high": high, "skills": skills,
                                                          "whitening": WHITENING[0],
                                                          "confidence": CONFIDENCE[0]}})


CV_SHRINKAGE: tuple[float | None, ...] = (None, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0)
FOLDS = 5
REPEATS = 3  # the 5-fold split drawn three times: one draw's noise is as large as the differences


def cv_folds(skills: Sequence[SkillConfig], seed: int) -> list[list[int]]:
    """Per skill, the fold of each of its texts; -1 for its profile (always indexed)."""
    rng = random.Random(seed)
    held: list[list[int]] = []
    for s in skills:
        texts = skill_texts(s)
        has_profile = bool(profile_text(s)) and texts[0] == profile_text(s)
        folds = [i % FOLDS for i in range(len(texts) - int(has_profile))]
        rng.shuffle(folds)
        held.append([-1, *folds] if has_profile else folds)
    return held


async def cv_whitening(ds: Dataset, args: argparse.Namespace) -> dict[str, object]:
    """L1.5 top-1 per whitening shrinkage, by cross-validation over the skills' examples only: each fold
    leaves a fifth of every skill's examples out of the index and routes them (5 folds, 3 draws)."""
    skills, _ = split(ds, args.examples, 0)
    vectors = (await embed_all([t for s in skills for t in skill_texts(s)])).vectors
    layer = SemanticLayer(RoutingPolicySpec().semantic)
    right = dict.fromkeys(CV_SHRINKAGE, 0)
    total = 0
    for repeat, fold in itertools.product(range(REPEATS), range(FOLDS)):
        held = cv_folds(skills, SEED + repeat)
        pairs = [list(zip(skill_texts(s), h, strict=True)) for s, h in zip(skills, held, strict=True)]
        kept = [[t for t, f in p if f != fold] for p in pairs]
        asked = [(t, s.name) for s, p in zip(skills, pairs, strict=True) for t, f in p if f == fold]
        total += len(asked)
        matrix = np.stack([vectors[t] for texts in kept for t in texts])
        queries = np.stack([vectors[t] for t, _ in asked])
        for shrinkage in CV_SHRINKAGE:
            index = index_from_vectors([s.name for s in skills], [], matrix, [len(k) for k in kept],
                                       whitening=shrinkage)
            right[shrinkage] += sum(layer.zone(index, q).candidates[0].skill == name
                                    for q, (_, name) in zip(queries, asked, strict=True))
    rec = {"bench": "routing_cv", "dataset": ds.name, "skills": len(skills),
           "examples_per_skill": "all" if args.examples is None else args.examples,
           "held_out_examples": total,
           "top1_by_whitening": {str(k): round(v / total, 4) for k, v in right.items()}}
    emit(rec)
    print(f"{ds.name:<10} CV top-1 on {total} held-out examples: "
          + "  ".join(f"{k}: {v / total:.1%}" for k, v in right.items()), file=sys.stderr)
    return rec


Decided = tuple[str, str, str | None, str, bool]


async def route_all(router: Router, agent: AgentConfig, texts: list[str]) -> list[Decided]:
    """(layer, route, skill, top candidate, decided without an LLM call) per text. With the classifier
    off, a message L2 would have taken is sent to chat at L1.5 with the reason "classifier disabled"."""
    out: list[Decided] = []
    for text in texts:
        d = await router.route(agent, text, CTX)
        no_llm = d.layer in ("L0", "L1") or (d.layer == "L1.5" and d.reason != "classifier disabled")
        out.append((d.layer, d.route, d.skill, d.candidates[0].skill if d.candidates else "", no_llm))
    return out


async def run_dataset(ds: Dataset, args: argparse.Namespace) -> dict[str, object]:
    skills, labelled = split(ds, args.examples, args.calibration)
    if args.cross_fit:  # the calibration lines are examples too; `routing fit` scores them out of fold
        extra: dict[str, list[str]] = defaultdict(list)
        for text, label in labelled:
            if label is not None:
                extra[label].append(text)
        skills = [s.model_copy(update={"examples": [*s.examples, *extra[s.name]]}) for s in skills]
    queries: Labelled = [(t, i) for t, i in ds.test]
    queries += [(t, None) for t in ds.oos_test]
    texts = [t for s in skills for t in [*s.examples, s.description]] + [t for t, _ in labelled + queries]
    started = time.perf_counter()
    embedded = await embed_all(texts, searched=[t for s in skills for t in skill_texts(s)])
    embed_s = time.perf_counter() - started
    agent = AgentConfig(id="bench", tenant="bench", model="none", skills=skills)
    embedder = embedded.lookup()

    # Calibrate with `routing fit`'s own scoring: L1.5 confidence of the labelled lines, thresholds per skill.
    probe_policy = policy_with(None, 0.0, 1.0, heuristic=False)
    probe = Router(probe_policy, embedder, lambda: None)
    fitted = fit(await score_with(skills, labelled, embedder, probe_policy), target=args.target)

    router = Router(policy_with(fitted.skills, fitted.low, fitted.high), embedder, lambda: None)
    decided = await route_all(router, agent, [t for t, _ in queries])
    no_llm = [(d, label) for d, (_, label) in zip(decided, queries, strict=True) if d[4]]
    right = sum(1 for d, label in no_llm if (d[2] if d[1] == "skill" else None) == label)
    # L1.5's high zone alone (no L1 short-cut)
    high = [(d, label) for d, label in no_llm if d[0] == "L1.5" and d[1] == "skill"]
    # messages L1 found simple: how many went on to L1.5 (sharing a skill term), and what became of them
    simple = [(d, label) for d, (text, label) in zip(decided, queries, strict=True)
              if router.complexity.is_low(text)[0]]
    in_scope = [(d, label) for d, (_, label) in zip(decided, queries, strict=True) if label is not None]
    # top-1 over in-scope queries: the best skill L1.5 found, whichever layer decided.
    top1_pairs = [(d[3], label) for d, label in in_scope if d[3]]
    top1_all = await top1_only(probe, agent, [t for t, label in queries if label is not None],
                               [label for _, label in queries if label is not None])
    oos = [d for d, (_, label) in zip(decided, queries, strict=True) if label is None]
    rec = {"bench": "routing", "dataset": ds.name, "language": ds.language, "skills": len(skills),
           "examples_per_skill": "all" if args.examples is None else args.examples, "queries": len(queries),
           "in_scope": len(in_scope),
           "out_of_scope": len(oos), "embedder": embedded.name, "embed_s": round(embed_s, 1),
           "whitening": WHITENING[0], "confidence": CONFIDENCE[0], "fitted_low": fitted.low, "fitted_high": fitted.high,
           "target_precision": args.target, "cross_fit": args.cross_fit,
           "coverage_no_llm": round(len(no_llm) / len(queries), 4),
           "accuracy_no_llm": round(right / len(no_llm), 4) if no_llm else None,
           "by_layer": {layer: sum(1 for d in decided if d[0] == layer and (layer != "L1.5" or d[1] == "skill"))
                        for layer in ("L0", "L1", "L1.5")},
           "l1_simple": {"in_scope": sum(1 for _, label in simple if label is not None),
                         "in_scope_direct_at_l1": sum(1 for d, label in simple if label is not None and d[0] == "L1"),
                         "in_scope_right": sum(1 for d, label in simple if label is not None and d[2] == label),
                         "out_of_scope": sum(1 for _, label in simple if label is None),
                         "out_of_scope_direct": sum(1 for d, label in simple if label is None and d[1] == "direct"
                                                    and d[4])},
           "l15_top1_in_scope": round(top1_all, 4),
           "l15_top1_in_scope_past_l1": round(sum(1 for s, lab in top1_pairs if s == lab) / len(top1_pairs), 4)
           if top1_pairs else None,
           "accuracy_l15_high": round(sum(1 for d, label in high if d[2] == label) / len(high), 4) if high else None,
           "oos_routed_high": round(sum(1 for d in oos if d[1] == "skill" and d[0] == "L1.5") / len(oos), 4)
           if oos else None}
    emit(rec)
    print(f"{ds.name:<10} {ds.language}  skills {len(skills):>3}  queries {len(queries):>5}  "
          f"no-LLM coverage {rec['coverage_no_llm']:.1%} at accuracy {rec['accuracy_no_llm'] or 0:.1%}  "
          f"(L1.5 high alone {rec['accuracy_l15_high'] or 0:.1%})  L1.5 top-1 {rec['l15_top1_in_scope']:.1%}  "
          f"OOS high {rec['oos_routed_high'] or 0:.1%}  simple in-scope direct at L1 "
          f"{rec['l1_simple']['in_scope_direct_at_l1']} of {rec['l1_simple']['in_scope']}",  # type: ignore[index]
          file=sys.stderr)
    return rec


async def top1_only(probe: Router, agent: AgentConfig, texts: list[str], labels: list[str | None]) -> float:
    """L1.5's best skill for every in-scope query (no L1 short-cut), as the top-1 accuracy."""
    right = 0
    for text, label in zip(texts, labels, strict=True):
        d = await probe.route(agent, text, CTX)
        right += int(bool(d.candidates) and d.candidates[0].skill == label)
    return right / len(texts) if texts else 0.0


async def overhead(skills_n: int, examples: int, queries: int, dim: int, blocks: tuple[int, ...] = ()
                   ) -> dict[str, object]:
    """Routing time without the embedding: query vectors come from a lookup. With `blocks` (the
    composite's), every text is English, as the composite embeds it: its vector in the first block,
    and each skill text a second row in the last (embeddings.contract.SearchedRows)."""
    rng = np.random.default_rng(SEED)

    def tag(n: int) -> str:  # a distinct word per skill, for L1's skill terms
        return "".join(chr(ord("a") + (n // 26 ** k) % 26) for k in range(3)) + "ix"

    texts = [f"skill {s} example {e}" for s in range(skills_n) for e in range(examples)]
    profiles = [f"skill {s} {tag(s)}" for s in range(skills_n)]
    asked = [f"query number {q} about something in particular" for q in range(queries)]
    # short messages L1 finds simple: half share a skill's term (on to L1.5), half are chit-chat (direct)
    short = [f"{tag(q % skills_n)} please" if q % 2 else "thank you" for q in range(queries // 2)]
    all_texts = texts + profiles + asked + short

    def unit_rows(n: int, first: int, end: int) -> npt.NDArray[np.float32]:
        rows = np.zeros((n, dim), dtype=np.float32)
        rows[:, first:end] = rng.standard_normal((n, end - first))
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    vectors = dict(zip(all_texts, unit_rows(len(all_texts), 0, blocks[0] if blocks else dim), strict=True))
    skills = [SkillConfig(name=f"s{s}", description=f"skill {s} {tag(s)}",
                          examples=[f"skill {s} example {e}" for e in range(examples)]) for s in range(skills_n)]
    searched = [t for s in skills for t in skill_texts(s)]
    extra = dict(zip(searched, unit_rows(len(searched), blocks[-1], dim)[:, None, :], strict=True)) if blocks else {}
    agent = AgentConfig(id="bench", tenant="bench", model="none", skills=skills)
    router = Router(policy_with(None, 0.6, 0.85), LookupEmbedder("lookup", dim, vectors, extra, blocks), lambda: None)
    started = time.perf_counter()
    await router.prepare([agent])  # builds the index (at registration in the runtime), however long it takes
    build_s = time.perf_counter() - started
    times = []
    for text in asked:
        t = time.perf_counter()
        await router.route(agent, text, CTX)
        times.append((time.perf_counter() - t) * 1000)
    short_times: dict[str, list[float]] = {"L1": [], "L1.5": []}
    for text in short:
        t = time.perf_counter()
        d = await router.route(agent, text, CTX)
        short_times["L1" if d.layer == "L1" else "L1.5"].append((time.perf_counter() - t) * 1000)
    rec = {"bench": "routing_overhead", "skills": skills_n, "examples_per_skill": examples, "dim": dim,
           "confidence": CONFIDENCE[0], "index_build_s": round(build_s, 3), "queries": queries,
           "p50_ms": round(float(np.percentile(times, 50)), 4),
           "p99_ms": round(float(np.percentile(times, 99)), 4),
           "short_direct_at_l1": {"queries": len(short_times["L1"]),
                                  "p50_ms": round(float(np.percentile(short_times["L1"] or [0.0], 50)), 4)},
           "short_on_to_l15": {"queries": len(short_times["L1.5"]),
                               "p50_ms": round(float(np.percentile(short_times["L1.5"] or [0.0], 50)), 4)}}
    emit(rec)
    print(f"overhead   {skills_n} skills x {examples} examples (dim {dim}): p50 {rec['p50_ms']:.3f} ms  "
          f"p99 {rec['p99_ms']:.3f} ms (excluding the embedding); short messages: direct at L1 p50 "
          f"{rec['short_direct_at_l1']['p50_ms']:.3f} ms ({len(short_times['L1'])}), sharing a skill term "
          f"p50 {rec['short_on_to_l15']['p50_ms']:.3f} ms ({len(short_times['L1.5'])}); index built in "
          f"{build_s:.2f} s", file=sys.stderr)
    return rec


async def main_async(args: argparse.Namespace, datasets: list[Dataset]) -> None:
    if args.cv:
        for ds in datasets:
            await cv_whitening(ds, args)
        return
    for ds in datasets:
        await run_dataset(ds, args)
    model = bench_model()  # the overhead's vectors are random: no model is loaded for them
    if args.smoke:
        await overhead(50, 3, 50, model.dimension, model.blocks)
    else:
        for skills_n, examples in overhead_sizes(args.overhead):
            await overhead(skills_n, examples, 2000, model.dimension, model.blocks)


def examples_arg(value: str) -> int | None:
    """--examples: a count, or "all" (None)."""
    if value == "all":
        return None
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a count or all, got {value!r}")
    return int(value)


def overhead_sizes(value: str) -> list[tuple[int, int]]:
    sizes = []
    for part in value.split(","):
        skills, _, examples = part.strip().partition("x")
        if not (skills.isdigit() and examples.isdigit()):
            raise argparse.ArgumentTypeError(f"--overhead: expected SKILLSxEXAMPLES, got {part!r}")
        sizes.append((int(skills), int(examples)))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--banking", default=str(DATA / "banking77"), help="banking77 directory (CSV)")
    parser.add_argument("--clinc", default=str(DATA / "clinc150" / "data_full.json"), help="CLINC150 data_full.json")
    parser.add_argument("--hwu", default=str(DATA / "hwu64"), help="HWU64 directory (CSV)")
    parser.add_argument("--massive", default=str(DATA / "massive"),
                        help="MASSIVE directory (en-US/ and zh-CN/, train.csv and test.csv in each)")
    parser.add_argument("--cais", default=None, help="CAIS directory (ch.train, ch.train.intent, ...)")
    parser.add_argument("--only", default="",
                        help="comma-separated data sets to run (banking77, clinc150, hwu64, massive-en, massive-zh, "
                             "massive-en-zh, cais); all when empty")
    parser.add_argument("--whitening", default="default",
                        help="semantic.whitening of the policy: a shrinkage in [0, 1], none, or default")
    parser.add_argument("--confidence", default="default", choices=["default", "scoreAndProbability", "scoreAndLead"],
                        help="semantic.confidence of the policy (what the zones compare with high/low)")
    parser.add_argument("--cv", action="store_true",
                        help="print the cross-validated top-1 of each whitening on the skills' examples only")
    parser.add_argument("--examples", type=examples_arg, default=10,
                        help="examples per skill, from the train split; all: every train utterance of the intent "
                             "but its calibration lines")
    parser.add_argument("--overhead", default="1000x10",
                        help="SKILLSxEXAMPLES[,...]: sizes of the overhead measurement (e.g. 1000x10,77x130)")
    parser.add_argument("--calibration", type=int, default=20, help="labelled lines per intent for routing fit")
    parser.add_argument("--target", type=float, default=0.97, help="target precision of routing fit")
    parser.add_argument("--cross-fit", action="store_true",
                        help="calibration lines are also the skills' examples (routing fit scores them out of fold)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (make test)")
    parser.add_argument("--queries-per-intent", type=int, default=0,
                        help="at most this many test queries per intent (0: all); out-of-scope ones in the same share")
    parser.add_argument("--cache", default=None, help="file (.npz) keeping the embeddings across runs "
                        "(of one embedder: another one's vectors in it are not read)")
    parser.add_argument("--embedder", default=None, choices=sorted(LOCAL_MODEL), metavar="NAME",
                        help="the local embedding model (default: the runtime's default, "
                             "bge-small-en-v1.5+multilingual-e5-small); e.g. multilingual-e5-small")
    args = parser.parse_args()
    try:
        overhead_sizes(args.overhead)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    EMBED_CACHE[:] = [Path(args.cache)] if args.cache else []
    EMBEDDER[:] = [args.embedder] if args.embedder else []
    if args.whitening != "default":
        WHITENING[:] = [None if args.whitening == "none" else float(args.whitening)]
    if args.confidence != "default":
        CONFIDENCE[:] = [args.confidence]
    datasets = [smoke_dataset()] if args.smoke else []
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    loaders = (("banking77", args.banking, load_banking), ("clinc150", args.clinc, load_clinc),
               ("hwu64", args.hwu, load_hwu), ("massive-en", args.massive, load_massive_en),
               ("massive-zh", args.massive, load_massive_zh), ("massive-en-zh", args.massive, load_massive_en_zh),
               ("cais", args.cais, load_cais))
    if only - {n for n, _, _ in loaders}:
        parser.error(f"--only: unknown data set(s) {', '.join(sorted(only - {n for n, _, _ in loaders}))}")
    for _, path, loader in () if args.smoke else [t for t in loaders if not only or t[0] in only]:
        if path is not None and not Path(path).exists():
            print(f"skipping {path}: not found", file=sys.stderr)
        elif path is not None:
            ds = loader(Path(path))
            datasets.append(cap_queries(ds, args.queries_per_intent) if args.queries_per_intent else ds)
    with threadpool_limits(1):
        asyncio.run(main_async(args, datasets))


if __name__ == "__main__":
    main()
