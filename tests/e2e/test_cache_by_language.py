"""The semantic cache of a runtime whose embedder is bge-small-en-v1.5+multilingual-e5-small.

English questions are compared by bge, others by e5, and an English question never meets a
question in another language: at the cosine threshold used here (0.85) e5 alone scores the
English password question against its Chinese translation at 0.88, a hit; here it is a miss.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import GATEWAY_ENV, gateway_config
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess

ACME = {"authorization": f"Bearer {GATEWAY_ENV['STRATA_KEY_ACME']}"}
EMBEDDER = "bge-small-en-v1.5+multilingual-e5-small"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory,
            openai_upstream_session: UpstreamServer) -> Iterator[RuntimeProcess]:
    workdir: Path = tmp_path_factory.mktemp("cache-by-language")
    config = gateway_config(
        workdir, openai_upstream_session.base_url,
        embedder={"provider": "local", "model": EMBEDDER, "timeoutSeconds": 20},
        cache={"enabled": True, "backend": "memory", "exact": {"enabled": True, "ttlSeconds": 600},
               "semantic": {"enabled": True, "threshold": 0.85, "ttlSeconds": 600, "maxTemperature": 0}},
    )
    process = RuntimeProcess(config, workdir, env=GATEWAY_ENV)
    process.start(timeout=90)
    yield process
    process.stop()


def ask(http: httpx.Client, system: str, text: str) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]}
    response = http.post("/v1/chat/completions", json=body, headers=ACME)
    assert response.status_code == 200, response.text
    return response


def test_paraphrases_hit_within_a_language_and_never_across(http: httpx.Client,
                                                             openai_upstream: UpstreamServer) -> None:
    system = "You are a banking assistant (languages test)."
    english = ask(http, system, "How do I reset my password?")
    assert english.headers["x-strata-cache"] == "miss"
    assert ask(http, system, "How to reset my password?").headers["x-strata-cache"] == "hit_semantic"

    chinese = ask(http, system, "我怎么重置密码？")  # noqa: RUF001
    assert chinese.headers["x-strata-cache"] == "miss"  # not the English answer
    assert chinese.json()["choices"][0]["message"]["content"] == "echo: 我怎么重置密码？"  # noqa: RUF001
    again = ask(http, system, "如何重置密码？")  # noqa: RUF001
    assert again.headers["x-strata-cache"] == "hit_semantic"
    assert again.json()["choices"] == chinese.json()["choices"]
    assert openai_upstream.stats()["by_path"]["/v1/chat/completions"] == 2


def test_embeddings_are_768_wide_with_each_language_in_its_half(http: httpx.Client) -> None:
    texts = ["How do I reset my password?", "我怎么重置密码？"]  # noqa: RUF001
    response = http.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts}, headers=ACME)
    assert response.status_code == 200, response.text
    vectors = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    assert vectors.shape == (2, 768)
    assert vectors[0, 384:].any() == False and vectors[1, :384].any() == False  # noqa: E712
    assert float(vectors[0] @ vectors[1]) == 0.0
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
