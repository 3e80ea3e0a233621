"""Calibration data for the semantic cache's verifier: splits, pairs and cached embeddings.

Splits (fixed, reproducible):
* banking77: its own train.csv (fitting) and test.csv (measuring); a seeded sample of each;
* clinc150, hwu64, massive-en, massive-zh (intent sets, cache-like like banking77): a seeded sample
  of their test split, measured only unless listed in FITTED_INTENTS (then a sample of their train
  split is fitted on); the fit never reads a test split;
* paws-wiki-en and paws-x-zh: a pair belongs to the fitting half when crc32(a + "\\t" + b) is
  even, to the measuring half otherwise;
* outside pair sets (EXTERNAL_PAIR_SETS: MRPC, Quora Question Pairs (two samples: BiMPM's dev and
  test splits), LCQMC, AFQMC, OPPO-xiaobu, Chinese STS-B thresholded; licences that do not allow
  redistribution, so read from a directory given with `--pairs DIR` or STRATA_PAIRS_DATA, never
  shipped): a seeded sample of at most `Sizes.external` paraphrases and as many non-paraphrases,
  measured only, except FITTED_OUTSIDE (empty by default; `--fit-on NAME` adds one), which the fit
  reads on the fitting half of that sample (even crc32) and the table measures on the other half.

Embeddings are computed with the runtime's local embedder and cached on disk under
~/.cache/strata/bench/ (keyed by model and text), so refits do not re-embed.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STRATA_CALIBRATION_DATA", ROOT / "bench" / "data"))
CACHE_DIR = Path.home() / ".cache" / "strata" / "bench"
BANKING_TRAIN_ROWS = 2000
BANKING_TEST_ROWS = 2000
INTENT_ROWS = 1000  # rows of each other intent set's test split (measured) or train split (when fitted)

# Cache-like intent sets: banking77 and four the verifier may never have been fitted on.
INTENT_SETS = ("banking77", "clinc150", "hwu64", "massive-en", "massive-zh")
# The intent sets whose train split `calibrate --fit` reads; the others are measure-only columns.
# MASSIVE zh-CN (CC BY 4.0) gives the Chinese model short user questions besides PAWS-X's long sentences.
FITTED_INTENTS: tuple[str, ...] = ("banking77", "massive-zh")
PAIR_SETS = ("paws-wiki-en", "paws-x-zh")
# The shipped parameters are fitted on these sets only, all of them licensed for any use (banking77 and
# MASSIVE CC BY 4.0, PAWS / PAWS-X "freely used for any purpose"). The outside pair sets (LCQMC, MRPC,
# ...) are for research use or carry no licence: measure-only columns by default; `--fit-on NAME` adds
# one to a fit of one's own (`--params-out`), `--leave-out NAME` drops a default source.
FITTED_OUTSIDE: tuple[str, ...] = ()
FITTED: tuple[str, ...] = (*FITTED_INTENTS, *PAIR_SETS, *FITTED_OUTSIDE)
EXTERNAL_ROWS = 500  # paraphrases (and as many non-paraphrases) sampled from each outside pair set


@dataclass(frozen=True)
class PairFile:
    """An outside paraphrase-pair set: its file under the pairs directory, its layout and language."""

    path: str
    layout: str  # "tsv3": a<TAB>b<TAB>label; "mrpc": MRPC's Quality, #1 ID, #2 ID, #1 String, #2 String;
    # "sts": a<TAB>b<TAB>similarity 0-5, a paraphrase at >= STS_SAME ("mostly equivalent"), a look-alike
    # from STS_NEAR up ("share some details"); unrelated pairs (under STS_NEAR) are left out: too easy;
    # "bimpm": label<TAB>a<TAB>b<TAB>id, both sides tokenised by Stanford CoreNLP (BiMPM's Quora split),
    # the tokens joined back into text (detokenise)
    language: str


EXTERNAL_PAIR_SETS: dict[str, PairFile] = {
    "mrpc": PairFile("mrpc/msr_paraphrase_train.txt", "mrpc", "en"),
    "lcqmc": PairFile("lcqmc/dev.txt", "tsv3", "zh"),
    "afqmc": PairFile("afqmc/dev.txt", "tsv3", "zh"),
    "oppo-xiaobu": PairFile("oppo-xiaobu/dev.txt", "tsv3", "zh"),
    "sts-b-zh": PairFile("sts-b-zh/sts-b-train.txt", "sts", "zh"),
    # Quora Question Pairs in Wang et al.'s BiMPM split (label, question, question, id; CoreNLP tokens):
    # two disjoint samples of one kind, so that what is read while designing (qqp-dev) is checked on
    # pairs never looked at (qqp-test)
    "qqp-dev": PairFile("qqp/dev.tsv", "bimpm", "en"),
    "qqp-test": PairFile("qqp/test.tsv", "bimpm", "en"),
}
STS_SAME = 4.0  # STS 4: "mostly equivalent, some unimportant details differ"; 3: "some important information differs"
STS_NEAR = 2.0  # STS 2: "not equivalent, but share some details"


@dataclass(frozen=True)
class Sizes:
    """How much of each set a run takes: banking77 rows per split, rows of the other intent sets,
    PAWS pairs per half (None: all)."""

    banking_train: int = BANKING_TRAIN_ROWS
    banking_test: int = BANKING_TEST_ROWS
    pairs: int | None = None
    intents: int = INTENT_ROWS
    external: int = EXTERNAL_ROWS

    def rows(self, name: str, split: str) -> int:
        if name != "banking77":
            return self.intents
        return self.banking_train if split == "train" else self.banking_test

    def banking(self, split: str) -> int:
        return self.rows("banking77", split)


FULL = Sizes()
# the smoke pass: the same code (every set included, a tiny sample of each), seconds of embedding
SMOKE = Sizes(banking_train=60, banking_test=60, pairs=12, intents=30, external=10)


@dataclass
class Pair:
    a: str
    b: str
    same: bool


def intent_rows(name: str, split: str, limit: int) -> list[tuple[str, str]]:
    """A seeded sample of (text, intent) from one split (train or test) of an intent set."""
    assert name in INTENT_SETS and split in ("train", "test"), (name, split)
    if name == "clinc150":  # in-scope queries only: an out-of-scope query has no intent to match
        data = json.loads((DATA / "clinc150" / "data_full.json").read_text())
        rows = [(text, intent) for text, intent in data[split]]
    else:
        locale = {"massive-en": "en-US", "massive-zh": "zh-CN"}
        path = DATA / "massive" / locale[name] if name in locale else DATA / name
        with (path / f"{split}.csv").open() as f:
            rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    rows = list({text: (text, intent) for text, intent in reversed(rows)}.values())[::-1]  # first of each text:
    # a repeated text would be an exact hit, not a semantic one (MASSIVE repeats some, a few under two intents)
    rnd = random.Random(f"{name}-{split}")
    return rnd.sample(rows, min(limit, len(rows)))


def paws_pairs(name: str, split: str, limit: int | None = None) -> list[Pair]:
    pairs: list[Pair] = []
    with (DATA / name / "pairs.jsonl").open() as f:
        for line in f:
            if limit is not None and len(pairs) >= limit:
                break
            d = json.loads(line)
            half = "train" if zlib.crc32(f"{d['a']}\t{d['b']}".encode()) % 2 == 0 else "test"
            if half == split:
                pairs.append(Pair(d["a"], d["b"], bool(d["same"])))
    return pairs


_PTB_BRACKETS = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}
_PTB_QUOTES = {"``", "''"}
_NO_SPACE_BEFORE = re.compile(r" (?=[?.,!:;%)\]}]|'(?:s|m|re|ve|ll|d|em)\b|n't\b)", re.IGNORECASE)
_NO_SPACE_AFTER = re.compile(r"(?<=[(\[{$]) ")


def detokenise(text: str) -> str:
    """Text from Penn-Treebank-style tokens (CoreNLP): "How do n't I -LRB- sic -RRB- ?" -> "How don't I (sic)?".
    The `` / '' quote tokens are dropped: in the Quora file they are mostly CSV quoting turned into
    tokens ("`` How '' `` great '' '' was ..."), which the hit guard would read as quoted strings."""
    words = [_PTB_BRACKETS.get(w, w) for w in text.split() if w not in _PTB_QUOTES]
    return _NO_SPACE_AFTER.sub("", _NO_SPACE_BEFORE.sub("", " ".join(words)))


_COLUMNS = {"mrpc": 5, "tsv3": 3, "bimpm": 4, "sts": 3}


def _sts_label(score: str) -> str | None:
    """STS similarity to a label: "1" from STS_SAME, "0" from STS_NEAR, None under it or unreadable."""
    try:
        similarity = float(score)
    except ValueError:
        return None
    return None if similarity < STS_NEAR else "1" if similarity >= STS_SAME else "0"


def _pair_columns(cols: list[str], layout: str) -> tuple[str, str, str | None]:
    """(a, b, label) of one line's columns in a layout (label None: skip the line)."""
    if layout == "mrpc":
        return cols[3], cols[4], cols[0].lstrip("\ufeff")
    if layout == "tsv3":
        return cols[0], cols[1], cols[2]
    if layout == "bimpm":
        return detokenise(cols[1]), detokenise(cols[2]), cols[0]
    return cols[0], cols[1], _sts_label(cols[2])


def read_pair_lines(lines: Sequence[str], layout: str) -> list[Pair]:
    """Pairs of one outside file. Lines that do not parse (a wrong column count, a label other
    than 0 / 1) are skipped, and so are pairs whose two sides are the same text (an exact hit, not
    a semantic one); a pair repeated keeps its first label."""
    if layout not in _COLUMNS:
        raise ValueError(f"unknown pair layout {layout!r}")
    pairs: dict[tuple[str, str], Pair] = {}
    for i, line in enumerate(lines):
        cols = line.rstrip("\r\n").split("\t")
        if len(cols) != _COLUMNS[layout] or (layout == "mrpc" and i == 0 and cols[0].lstrip("\ufeff") == "Quality"):
            continue
        a, b, label = _pair_columns(cols, layout)
        a, b = a.strip(), b.strip()
        if label is None or label.strip() not in ("0", "1") or not a or not b or a == b:
            continue
        pairs.setdefault((a, b), Pair(a, b, label.strip() == "1"))
    return list(pairs.values())


def pairs_dir() -> Path | None:
    """The directory of the outside pair sets (STRATA_PAIRS_DATA), or None: their columns are skipped."""
    value = os.environ.get("STRATA_PAIRS_DATA")
    return Path(value) if value else None


def external_available(root: Path | None = None) -> tuple[str, ...]:
    root = root or pairs_dir()
    if root is None:
        return ()
    return tuple(name for name, f in EXTERNAL_PAIR_SETS.items() if (root / f.path).is_file())


def external_pairs(name: str, split: str, limit: int, root: Path | None = None) -> list[Pair]:
    """A seeded sample of an outside pair set: at most `limit` paraphrases and `limit` non-paraphrases
    (so both rates rest on the same number of probes), then split "all" (measured, never fitted), or
    the fitting ("train": even crc32) or measuring ("test": odd) half of that sample."""
    assert name in EXTERNAL_PAIR_SETS and split in ("all", "train", "test"), (name, split)
    root = root or pairs_dir()
    assert root is not None, "outside pair sets need --pairs DIR (or STRATA_PAIRS_DATA)"
    spec = EXTERNAL_PAIR_SETS[name]
    with (root / spec.path).open(encoding="utf-8-sig") as f:
        pairs = read_pair_lines(f.read().splitlines(), spec.layout)
    rnd = random.Random(f"pairs-{name}")
    sample: list[Pair] = []
    for same in (True, False):
        group = [p for p in pairs if p.same is same]
        sample += rnd.sample(group, min(limit, len(group)))
    if split == "all":
        return sample
    even = split == "train"
    return [p for p in sample if (zlib.crc32(f"{p.a}\t{p.b}".encode()) % 2 == 0) is even]


def intent_splits(name: str, fitted: tuple[str, ...] = FITTED_INTENTS) -> tuple[str, ...]:
    """The splits of an intent set a run reads: test always, train only when it is fitted on."""
    return ("train", "test") if name in fitted else ("test",)


def external_splits(name: str, fitted: tuple[str, ...] = FITTED) -> tuple[str, ...]:
    """The parts of an outside pair set a run reads: all of its sample (measured only), or both
    halves when it is fitted on."""
    return ("train", "test") if name in fitted else ("all",)


def all_texts(sizes: Sizes = FULL, fitted: tuple[str, ...] = FITTED,
              external: tuple[str, ...] = ()) -> list[str]:
    texts: list[str] = []
    for name in INTENT_SETS:
        for split in intent_splits(name, fitted):
            texts += [t for t, _ in intent_rows(name, split, sizes.rows(name, split))]
    for name in PAIR_SETS:
        for split in ("train", "test"):
            for p in paws_pairs(name, split, sizes.pairs):
                texts += [p.a, p.b]
    for name in external:
        for split in external_splits(name, fitted):
            for p in external_pairs(name, split, sizes.external):
                texts += [p.a, p.b]
    return list(dict.fromkeys(texts))


class VectorCache:
    """text -> unit vector for one embedding model, persisted as JSON lines of (text, base64)."""

    def __init__(self, model: str):
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        self.path = CACHE_DIR / f"vectors-{model.replace('/', '_')}.npz"
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.exists():
            data = np.load(self.path, allow_pickle=False)
            for text, vector in zip(json.loads(str(data["texts"])), data["vectors"], strict=True):
                self.vectors[text] = vector

    def save(self) -> None:
        texts = list(self.vectors)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, texts=np.array(json.dumps(texts)), vectors=np.vstack([self.vectors[t] for t in texts]))
        tmp.replace(self.path)

    def fill(self, texts: Sequence[str], encode: Callable[[list[str]], np.ndarray], batch: int = 32) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        t0 = time.perf_counter()
        for i in range(0, len(missing), batch):
            chunk = missing[i : i + batch]
            for text, vector in zip(chunk, encode(chunk), strict=True):
                self.vectors[text] = vector.astype(np.float32)
            if (i // batch) % 20 == 19:
                self.save()
                print(f"embedded {i + len(chunk)}/{len(missing)} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        if missing:
            self.save()

    def matrix(self, texts: Sequence[str]) -> np.ndarray:
        return np.vstack([self.vectors[t] for t in texts])


if __name__ == "__main__":  # prefill the cache: python -m bench._calibration_data
    from strata_runtime.embeddings.e5 import VECTORS_KEY, E5Small

    model = E5Small()
    cache = VectorCache(VECTORS_KEY)
    texts = all_texts(external=external_available())
    print(f"{len(texts)} texts, {len(cache.vectors)} cached", file=sys.stderr)
    cache.fill(texts, model.encode)
