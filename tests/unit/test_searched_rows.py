"""Rows for searched texts (`embeddings.contract.SearchedRows`): the composite embedder gives an English
skill text a second row in its other-languages model, and L1.5's index files every row under its skill."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from strata_runtime.config.agents import SkillConfig
from strata_runtime.config.policies import SemanticRoutingConfig
from strata_runtime.embeddings import EmbeddingUnavailable, LocalEmbedder
from strata_runtime.embeddings.by_language import ByLanguage
from strata_runtime.embeddings.contract import embed_searched
from strata_runtime.routing.index import BlockedIndex, build_index, index_from_vectors
from strata_runtime.routing.semantic import SemanticLayer

pytestmark = pytest.mark.unit

F32 = npt.NDArray[np.float32]


class Marked:
    """An engine whose vector says which engine saw the text: `mark` in column 0, the text's length in 1."""

    def __init__(self, mark: float, seen: list[list[str]], gate: threading.Event | None = None):
        self.mark, self.seen, self.gate = mark, seen, gate

    def encode(self, texts: Sequence[str]) -> F32:
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        self.seen.append(list(texts))
        out = np.zeros((len(texts), 2), np.float32)
        out[:, 0] = self.mark
        out[:, 1] = [len(t) for t in texts]
        return out


def _composite(english_seen: list[list[str]], other_seen: list[list[str]],
               gate: threading.Event | None = None) -> LocalEmbedder:
    embedder = LocalEmbedder(timeout_seconds=30)
    model = ByLanguage(lambda: Marked(1.0, english_seen, gate), lambda: Marked(2.0, other_seen), 2, 2)
    embedder._model = cast(Any, model)
    embedder.dimension = model.dimension
    return embedder


async def test_english_texts_get_a_second_row_in_the_other_languages_half() -> None:
    english_seen: list[list[str]] = []
    other_seen: list[list[str]] = []
    embedder = _composite(english_seen, other_seen)
    texts = ["write an article", "写一篇文章", "weather", "Ça va"]
    rows, owners = await embed_searched(embedder, texts)
    assert owners.tolist() == [0, 1, 2, 3, 0, 2]
    assert rows.tolist() == [[1, 16, 0, 0], [0, 0, 2, 5], [1, 7, 0, 0], [0, 0, 2, 5],
                             [0, 0, 2, 16], [0, 0, 2, 7]]
    assert np.array_equal(rows[:4], await embedder.embed(texts)), "the first rows are embed's"
    assert other_seen[1] == ["write an article", "weather"]
    await embedder.close()


async def test_a_plain_model_has_one_row_per_text() -> None:
    embedder = LocalEmbedder(timeout_seconds=30)
    embedder._model = cast(Any, Marked(1.0, []))
    rows, owners = await embedder.embed_searched(["write an article", "写一篇文章"])
    assert owners.tolist() == [0, 1] and rows.shape == (2, 2)
    await embedder.close()


async def test_other_side_rows_never_share_a_batch_with_plain_calls() -> None:
    """A batch is encoded by one function: a query queued behind a skill's second rows keeps its own
    language's half."""
    english_seen: list[list[str]] = []
    other_seen: list[list[str]] = []
    gate = threading.Event()
    embedder = _composite(english_seen, other_seen, gate)
    first = asyncio.create_task(embedder.embed(["running"]))
    for _ in range(200):
        if embedder._running is not None:
            break
        await asyncio.sleep(0.01)
    searched = asyncio.create_task(embedder._embed(["skill text"], background=False, other_side=True))
    query = asyncio.create_task(embedder.embed(["a query"]))
    await asyncio.sleep(0)
    gate.set()
    await first
    assert (await searched).tolist() == [[0, 0, 2, 10]]
    assert (await query).tolist() == [[1, 7, 0, 0]]
    assert other_seen == [["skill text"]] and english_seen == [["running"], ["a query"]]
    await embedder.close()


class Table:
    """A SearchedRows embedder over fixed vectors: `extra` texts get a second row."""

    name, dimension, blocks = "table", 3, ()

    def __init__(self, vectors: dict[str, list[float]], extra: dict[str, list[float]],
                 owners: list[int] | None = None):
        self.vectors, self.extra, self.owners = vectors, extra, owners

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> F32:
        return np.array([self.vectors.get(t, [0.0, 0.0, 1.0]) for t in texts], np.float32)

    async def embed_searched(self, texts: Sequence[str]) -> tuple[F32, npt.NDArray[np.intp]]:
        more = [(n, self.extra[t]) for n, t in enumerate(texts) if t in self.extra]
        rows = np.concatenate([await self.embed(texts), np.array([v for _, v in more], np.float32).reshape(-1, 3)])
        owners = self.owners if self.owners is not None else [*range(len(texts)), *(n for n, _ in more)]
        return rows, np.array(owners, dtype=np.intp)

    async def close(self) -> None:
        return None


SKILLS = [SkillConfig(name="writer", description="articles", examples=["write"]),
          SkillConfig(name="weather", description="forecasts", examples=["rain"])]


async def test_the_index_files_every_row_under_its_skill() -> None:
    table = Table({"articles": [1, 0, 0], "write": [1, 0, 0], "forecasts": [0.9, 0.1, 0], "rain": [0.9, 0.1, 0]},
                  extra={"articles": [0, 1, 0]})
    index = await build_index(SKILLS, table)
    assert index.names == ("writer", "weather") and index.counts.tolist() == [3, 2]
    assert index.vectors[:3].tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0]]
    ids, scores = index.scores(index.project(np.array([0, 1, 0], np.float32)), aggregation="max", top_k=1,
                               prefilter=64)
    assert index.names[int(ids[int(np.argmax(scores))])] == "writer", "the second row is the writer's"


@pytest.mark.parametrize("owners", [[0, 1, 2], [0, 1, 2, 3, 9], [1, 0, 2, 3, 0], [0, 1, 2, 3, -1]])
async def test_rows_that_do_not_fit_their_texts_are_an_embedder_failure(owners: list[int]) -> None:
    table = Table({}, extra={"articles": [0, 1, 0]}, owners=owners)
    with pytest.raises(EmbeddingUnavailable):
        await build_index(SKILLS, table)


class Blocked(Table):
    """Vectors in two blocks of columns, (0, 2) and (2, 4), each text's non-zero in one only."""

    dimension, blocks = 4, (2,)

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> F32:
        return np.array([self.vectors.get(t, [0.0, 0.0, 0.0, 1.0]) for t in texts], np.float32)

    async def embed_searched(self, texts: Sequence[str]) -> tuple[F32, npt.NDArray[np.intp]]:
        more = [(n, self.extra[t]) for n, t in enumerate(texts) if t in self.extra]
        rows = np.concatenate([await self.embed(texts), np.array([v for _, v in more], np.float32).reshape(-1, 4)])
        return rows, np.array([*range(len(texts)), *(n for n, _ in more)], dtype=np.intp)


async def test_a_blocked_index_scores_a_query_against_its_own_block_only() -> None:
    """English texts in the first block with a second row in the other; a Chinese-only skill has rows
    in the other block alone: an English query meets the English rows, a Chinese one every skill's
    rows of its block, each block's scores those of a plain index of that block's rows."""
    skills = [SkillConfig(name="writer", description="articles", examples=["write"]),
              SkillConfig(name="天气", description="天气预报", examples=["下雨"])]
    embedder = Blocked({"articles": [1, 0, 0, 0], "write": [0.8, 0.6, 0, 0], "天气预报": [0, 0, 0.6, 0.8],
                        "下雨": [0, 0, 0, 1]}, extra={"articles": [0, 0, 1, 0], "write": [0, 0, 0.8, 0.6]})
    index = await build_index(skills, embedder, whitening=None)
    assert isinstance(index, BlockedIndex) and index.names == ("writer", "天气")
    (_, _, english), (_, _, other) = index.parts
    assert english.names == ("writer",) and other.names == ("writer", "天气")
    assert other.counts.tolist() == [2, 2] and other.vectors.shape == (4, 2)
    layer = SemanticLayer(SemanticRoutingConfig(margin_weight=0.0))
    assert [c.skill for c in layer.zone(index, np.array([0.6, 0.8, 0, 0], np.float32)).candidates] == ["writer"]
    chinese = layer.zone(index, np.array([0, 0, 0.1, 0.995], np.float32))
    assert [c.skill for c in chinese.candidates] == ["天气", "writer"]
    plain = index_from_vectors(["writer", "天气"], [], np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]], np.float32),
                               [2, 2])
    assert [c.score for c in chinese.candidates] == pytest.approx(
        [c.score for c in layer.zone(plain, np.array([0.1, 0.995], np.float32)).candidates])
