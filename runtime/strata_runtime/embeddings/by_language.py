"""`bge-small-en-v1.5+multilingual-e5-small`: English texts to bge, every other text to e5, in disjoint blocks.

bge-small-en-v1.5 is the better English model (bench/README.md, "The bge engine"); it knows no
other language, where multilingual-e5-small stays. A vector has 768 dimensions: an English text
gets `[bge(text), 0...0]`, any other `[0...0, e5(text)]`. Both halves are unit vectors, so the
whole is one too, the cosine of two texts of the same side is that model's cosine, and the
cosine of an English and a non-English text is exactly 0: the semantic cache never serves one
for the other, and each language keeps its better model.

A skill's English text is searched by queries in every language (skill routing): it also gets a
row `[0...0, e5(text)]` (`encode_other_side`), which a non-English query finds with e5's cosine,
while an English query keeps bge's against its first row. The cache never asks for that row.

Each engine is loaded on first need (a process that only ever sees English never loads e5 and
its memory); `warm` loads both (the runtime's start-up, so no request pays a load).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from strata_runtime.embeddings import bge, e5

NAME = f"{bge.NAME}+{e5.NAME}"
DIMENSION = bge.DIMENSION + e5.DIMENSION
VECTORS_KEY = f"{bge.VECTORS_KEY}+{e5.VECTORS_KEY}"
_ASCII_LETTER = re.compile(r"[a-zA-Z]")


class Engine(Protocol):
    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


def is_english(text: str) -> bool:
    """English, for the embedder: at least one letter, and every letter (`str.isalpha`) an ASCII
    one, a-z or A-Z. Other characters (digits, punctuation, curly quotes, emoji) do not count.

    `café`, `naïve` or a text quoting one Chinese word go to e5 (which knows English too); a text
    without letters (digits, punctuation, emoji) too: nothing in it needs bge's English.
    """
    if not text.isascii() and any(c.isalpha() for c in text if not c.isascii()):
        return False
    return _ASCII_LETTER.search(text) is not None


class ByLanguage:
    """Synchronous and CPU-bound like the engines it holds: one `encode` at a time."""

    def __init__(self, english: Callable[[], Engine], other: Callable[[], Engine],
                 english_dimension: int = bge.DIMENSION, other_dimension: int = e5.DIMENSION):
        self._make = (english, other)
        self._engines: list[Engine | None] = [None, None]
        self._split = english_dimension
        self.dimension = english_dimension + other_dimension
        self._lock = threading.Lock()

    def loaded(self) -> tuple[bool, bool]:
        """(english engine loaded, other engine loaded)."""
        return self._engines[0] is not None, self._engines[1] is not None

    def warm(self) -> None:
        self._engine(0)
        self._engine(1)

    def _engine(self, side: int) -> Engine:
        engine = self._engines[side]
        if engine is None:
            with self._lock:
                engine = self._engines[side]
                if engine is None:
                    engine = self._engines[side] = self._make[side]()
        return engine

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        english = np.fromiter((is_english(t) for t in texts), dtype=bool, count=len(texts))
        for side, chosen, columns in ((0, english, slice(0, self._split)),
                                      (1, ~english, slice(self._split, self.dimension))):
            if chosen.any():
                rows = np.flatnonzero(chosen)
                vectors[rows, columns] = self._engine(side).encode([texts[int(i)] for i in rows])
        return vectors

    def encode_other_side(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Every text in the other languages' half, whatever its language (an English skill text's
        second row: see the module's docstring)."""
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if texts:
            vectors[:, self._split:] = self._engine(1).encode(list(texts))
        return vectors
