"""What the local ONNX encoders (e5.py, bge.py) share: their session settings and how a text becomes
one unit vector from windows of at most the model's positions.

One intra-op thread, not spinning (two OpenMP-style threads on a shared 2-core box were many times
slower under load), no memory arena (a long text's buffers go back to the allocator). A text is cut
to MAX_CHARS, its token ids into windows of `window` tokens, each window run alone between the
model's start and end tokens (no padding: the same vector alone or in a batch), and the window
vectors averaged weighted by their lengths, then normalised. An empty text is embedded as `empty`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
MAX_CHARS = 2000  # bounds one call: at most a few windows per text


def session(model: bytes | str, threads: int) -> Any:
    """An ONNX Runtime CPU session with the settings above (`model`: a serialised graph or a path)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def unit_vectors(texts: Sequence[str], *, dimension: int, window: int, content_ids: Callable[[str], list[int]],
                 window_vector: Callable[[list[int]], F32], start: int, end: int
                 ) -> F32:
    """One unit vector per text: its windows' vectors (`window_vector` of [start, *ids, end]) averaged
    by length."""
    vectors = np.zeros((len(texts), dimension), dtype=np.float32)
    for index, text in enumerate(texts):
        content = content_ids(text[:MAX_CHARS] if text.strip() else "empty")
        total = np.zeros(dimension, dtype=np.float64)
        for first in range(0, len(content), window):
            ids = content[first:first + window]
            total += len(ids) * window_vector([start, *ids, end])
        vectors[index] = total / max(float(np.linalg.norm(total)), 1e-12)
    return vectors
