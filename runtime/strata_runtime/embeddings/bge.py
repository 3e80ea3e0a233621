"""bge-small-en-v1.5 (English only) on ONNX Runtime: BAAI's model, Xenova's int8 ONNX export.

No wheel ships these weights: the build fetches them (images/fetch_models.py, run by
hack/venv.sh and the image's build stage) into `<venv>/share/strata/models/bge-small-en-v1.5/`;
`$STRATA_MODELS_DIR` points elsewhere. Nothing is downloaded at run time: missing weights are an
error when the embedder starts, naming the command that installs them.

The pieces: the file's WordPiece tokenizer (`tokenizers`), the graph (34 MB, int8 weights) and CLS
pooling, L2-normalised; no instruction prefix (the model card asks for none for symmetric
similarity, query vs cached query). Texts longer than the model's 512 positions are cut into
windows of 510 tokens, each between [CLS] and [SEP], and their CLS vectors averaged, weighted by
length, as e5.py does. One intra-op thread, not spinning, one session run per window without
padding (the same vector alone or in a batch): the reasons are e5.py's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from strata_runtime.embeddings import windows

F32 = npt.NDArray[np.float32]

NAME = "bge-small-en-v1.5"
# Caches of vectors (the benchmarks') are keyed by this: another export of the model gives other vectors.
VECTORS_KEY = f"{NAME}-onnx-int8"
DIMENSION = 384
MAX_POSITIONS = 512
MODEL_FILE = "bge-small-en-v1.5-q.onnx"
TOKENIZER_FILE = "bge-small-en-v1.5-q-tokenizer.json"
SETUP_COMMAND = "python3 images/fetch_models.py --prefix <venv>  (development: bash hack/venv.sh)"


class WeightsMissing(RuntimeError):
    """The model's files are not installed: the runtime cannot embed with it."""


def models_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where fetched model files live: $STRATA_MODELS_DIR, else <sys.prefix>/share/strata/models."""
    configured = (os.environ if env is None else env).get("STRATA_MODELS_DIR")
    return Path(configured) if configured else Path(sys.prefix) / "share" / "strata" / "models"


def weight_files(directory: Path | None = None) -> tuple[Path, Path]:
    """(graph, tokenizer) of bge-small-en-v1.5; WeightsMissing when either is absent."""
    base = (directory or models_dir()) / NAME
    files = (base / MODEL_FILE, base / TOKENIZER_FILE)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise WeightsMissing(f"the {NAME} embedding model is not installed ({', '.join(missing)} missing); "
                             f"install it with: {SETUP_COMMAND}, or point $STRATA_MODELS_DIR at a "
                             f"directory holding {NAME}/{MODEL_FILE} and {NAME}/{TOKENIZER_FILE}")
    return files


class BgeSmallEn:
    """Synchronous and CPU-bound: callers run `encode` in one worker thread at a time."""

    def __init__(self, threads: int = 1, directory: Path | None = None):
        from tokenizers import Tokenizer

        graph, tokenizer_file = weight_files(directory)
        self.dimension = DIMENSION
        self._window = MAX_POSITIONS - 2
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        cls, sep = self._tokenizer.token_to_id("[CLS]"), self._tokenizer.token_to_id("[SEP]")
        if cls is None or sep is None:
            raise WeightsMissing(f"{tokenizer_file} has no [CLS]/[SEP] tokens: not the {NAME} tokenizer")
        self._cls, self._sep = cls, sep
        self._session: Any = windows.session(str(graph), threads)
        self._inputs = [i.name for i in self._session.get_inputs()]
        unknown = set(self._inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if "input_ids" not in self._inputs or unknown:
            raise WeightsMissing(f"{graph} declares inputs {self._inputs}: not a BERT encoder graph")
        width = self._session.get_outputs()[0].shape[-1]
        if width != DIMENSION:
            raise WeightsMissing(f"{graph} gives {width}-dimensional states, {NAME} has {DIMENSION}")

    def content_ids(self, text: str) -> list[int]:
        """Token ids of the text without [CLS] and [SEP]."""
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def encode(self, texts: Sequence[str]) -> F32:
        """Unit vectors, one per text (an empty text is embedded as the word `empty`, as in e5.py)."""
        return windows.unit_vectors(texts, dimension=self.dimension, window=self._window,
                                    content_ids=self.content_ids, window_vector=self._cls_hidden,
                                    start=self._cls, end=self._sep)

    def _cls_hidden(self, ids: list[int]) -> F32:
        tokens = np.asarray([ids], dtype=np.int64)
        given = {"input_ids": tokens, "attention_mask": np.ones_like(tokens), "token_type_ids": np.zeros_like(tokens)}
        hidden = self._session.run(None, {name: given[name] for name in self._inputs})[0]
        cls: F32 = hidden[0, 0]
        return cls
