"""A lexical embedder (feature hashing of words and character trigrams), used for L3 only when the
runtime has no configured embedder (``services.embedder`` absent). It needs no model files and
is deterministic; it matches shared words, not meaning, and says so in its name."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    name = "lexical-hashing"

    def __init__(self, dimension: int = 256):
        self.dimension = dimension

    def _vector(self, text: str) -> npt.NDArray[np.float32]:
        vec = np.zeros(self.dimension, dtype=np.float32)
        words = _WORD.findall(text.lower())
        features = words + [w[i:i + 3] for w in words if len(w) > 3 for i in range(len(w) - 2)]
        for feature in features:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % self.dimension
            vec[index] += 1.0 if digest[4] & 1 else -1.0
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            vec[0] = 1.0
            return vec
        return vec / norm

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> npt.NDArray[np.float32]:
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dimension), np.float32)

    async def close(self) -> None:
        return None
