"""The numpy MiniLM embedder matches the reference, batches concurrent calls and keeps deadlines."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from strata_runtime.embeddings import EmbeddingUnavailable, LocalMiniLMEmbedder, OpenAIEmbedder

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())


@pytest.fixture(scope="module")
async def embedder():
    e = LocalMiniLMEmbedder(timeout_seconds=30)
    await e.start()
    yield e
    await e.close()


async def test_local_embedder_matches_the_reference_within_1e4_cosine(embedder: LocalMiniLMEmbedder):
    vectors = await embedder.embed(REFERENCE["sentences"])
    reference = np.asarray(REFERENCE["vectors"], dtype=np.float32)
    cosines = (vectors * reference).sum(axis=1)
    assert vectors.shape == (len(REFERENCE["sentences"]), 384)
    assert np.all(cosines > 1 - 1e-4), cosines


async def test_padding_to_the_longest_does_not_change_a_short_sentence(embedder: LocalMiniLMEmbedder):
    alone = await embedder.embed(["hi"])
    batched = await embedder.embed(["hi", REFERENCE["sentences"][6]])
    assert float(alone[0] @ batched[0]) > 1 - 1e-5


async def test_concurrent_calls_are_merged_into_fewer_batches(embedder: LocalMiniLMEmbedder):
    before = embedder.batches_run
    texts = [f"question number {i} about my card" for i in range(12)]
    results = await asyncio.gather(*(embedder.embed([t]) for t in texts))
    assert embedder.batches_run - before < len(texts)
    direct = await embedder.embed(texts)
    for i, r in enumerate(results):
        assert float(r[0] @ direct[i]) > 1 - 1e-5


async def test_a_missed_deadline_raises_embedding_unavailable():
    e = LocalMiniLMEmbedder(timeout_seconds=0.000001)
    with pytest.raises(EmbeddingUnavailable):
        await e.embed(["this cannot finish in a microsecond, the model is not even loaded"])
    await e.close()


async def test_openai_embedder_reads_a_real_endpoint_and_normalises(openai_upstream):
    e = OpenAIEmbedder(base_url=openai_upstream.base_url, model="text-embedding-3-small", timeout_seconds=5)
    vectors = await e.embed(["enable 2FA", "enable 2FA", "something else entirely"])
    await e.close()
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) > 0.9999


async def test_openai_embedder_fails_open_when_the_endpoint_is_dead():
    e = OpenAIEmbedder(base_url="http://127.0.0.1:9/v1", model="m", timeout_seconds=0.5)
    with pytest.raises(EmbeddingUnavailable):
        await e.embed(["hello"])
    with pytest.raises(EmbeddingUnavailable, match="cooling down"):
        await e.embed(["hello"])  # skipped at once, no second connection attempt
    await e.close()
