"""Calibration data for the semantic cache's verifier: splits, pairs and cached embeddings.

Splits (fixed, reproducible):
* banking77: its own train.csv (fitting) and test.csv (measuring); a seeded sample of each;
* clinc150, hwu64, massive-en, massive-zh (intent sets, cache-like like banking77): a seeded sample
  of their test split, measured only unless listed in FITTED_INTENTS (then a sample of their train
  split is fitted on); the fit never reads a test split;
* paws-wiki-en and paws-x-zh: a pair belongs to the fitting half when crc32(a + "\\t" + b) is
  even, to the measuring half otherwise.

Embeddings are computed with the runtime's local embedder and cached on disk under
~/.cache/strata/bench/ (keyed by model and text), so refits do not re-embed.
"""

from __future__ import annotations

import csv
import json
import os
import random
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
FITTED_INTENTS: tuple[str, ...] = ("banking77",)
PAIR_SETS = ("paws-wiki-en", "paws-x-zh")


@dataclass(frozen=True)
class Sizes:
    """How much of each set a run takes: banking77 rows per split, rows of the other intent sets,
    PAWS pairs per half (None: all)."""

    banking_train: int = BANKING_TRAIN_ROWS
    banking_test: int = BANKING_TEST_ROWS
    pairs: int | None = None
    intents: int = INTENT_ROWS

    def rows(self, name: str, split: str) -> int:
        if name != "banking77":
            return self.intents
        return self.banking_train if split == "train" else self.banking_test

    def banking(self, split: str) -> int:
        return self.rows("banking77", split)


FULL = Sizes()
# the smoke pass: the same code (every set included, a tiny sample of each), seconds of embedding
SMOKE = Sizes(banking_train=60, banking_test=60, pairs=12, intents=30)


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
            d = json.loads(line)
            half = "train" if zlib.crc32(f"{d['a']}\t{d['b']}".encode()) % 2 == 0 else "test"
            if half == split:
                pairs.append(Pair(d["a"], d["b"], bool(d["same"])))
            if limit is not None and len(pairs) >= limit:
                break
    return pairs


def intent_splits(name: str, fitted: tuple[str, ...] = FITTED_INTENTS) -> tuple[str, ...]:
    """The splits of an intent set a run reads: test always, train only when it is fitted on."""
    return ("train", "test") if name in fitted else ("test",)


def all_texts(sizes: Sizes = FULL, fitted: tuple[str, ...] = FITTED_INTENTS) -> list[str]:
    texts: list[str] = []
    for name in INTENT_SETS:
        for split in intent_splits(name, fitted):
            texts += [t for t, _ in intent_rows(name, split, sizes.rows(name, split))]
    for name in PAIR_SETS:
        for split in ("train", "test"):
            for p in paws_pairs(name, split, sizes.pairs):
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
    texts = all_texts()
    print(f"{len(texts)} texts, {len(cache.vectors)} cached", file=sys.stderr)
    cache.fill(texts, model.encode)
