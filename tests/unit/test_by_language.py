"""bge-small-en-v1.5+multilingual-e5-small: English in the first half, every other text in the second,
each engine loaded when first needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from strata_runtime.config.runtime import LOCAL_EMBEDDING_MODELS, EmbedderConfig
from strata_runtime.embeddings import LocalEmbedder, bge, by_language, e5
from strata_runtime.embeddings.bge import BgeSmallEn, WeightsMissing
from strata_runtime.embeddings.by_language import ByLanguage, is_english
from strata_runtime.embeddings.e5 import E5Small
from strata_runtime.embeddings.local import LOCAL_MODELS

pytestmark = pytest.mark.unit

ENGLISH = ["How do I reset my password?", "I forgot my password, how can I change it?",
           "don\u2019t charge my card twice \U0001f600", "order #42: 3 apples"]
OTHER = ["我的新卡什么时候到？", "Ça coûte combien ?", "how do I say 谢谢", "12345 !?", "", "Straße"]  # noqa: RUF001


@pytest.mark.parametrize("text", ENGLISH)
def test_english_is_letters_all_ascii(text: str) -> None:
    assert is_english(text)


@pytest.mark.parametrize("text", OTHER)
def test_any_other_letter_or_no_letter_at_all_is_not_english(text: str) -> None:
    assert not is_english(text)


class Fake:
    """An engine that writes which text it saw into its vector (its index + 1 in the batch)."""

    def __init__(self, dimension: int, seen: list[list[str]]):
        self.dimension, self.seen = dimension, seen

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.seen.append(list(texts))
        out = np.zeros((len(texts), self.dimension), np.float32)
        out[:, 0] = np.arange(1, len(texts) + 1)
        return out


def test_each_text_lands_in_its_language_s_half_in_order_and_engines_load_on_need() -> None:
    english_seen: list[list[str]] = []
    other_seen: list[list[str]] = []
    loads: list[str] = []

    def english() -> Fake:
        loads.append("english")
        return Fake(3, english_seen)

    def other() -> Fake:
        loads.append("other")
        return Fake(2, other_seen)

    model = ByLanguage(english, other, 3, 2)
    assert model.dimension == 5 and model.loaded() == (False, False) and loads == []
    model.encode(["only English here", "and here"])
    assert model.loaded() == (True, False) and loads == ["english"]
    vectors = model.encode(["hello", "你好", "world", "Ça va"])
    assert english_seen[-1] == ["hello", "world"] and other_seen == [["你好", "Ça va"]]
    assert vectors.tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 1, 0], [2, 0, 0, 0, 0], [0, 0, 0, 2, 0]]
    model.warm()
    model.encode(["你好"])
    assert loads == ["english", "other"]  # each engine loaded once
    assert model.encode([]).shape == (0, 5)


@pytest.fixture(scope="module")
def engines() -> tuple[BgeSmallEn, E5Small]:
    return BgeSmallEn(), E5Small()


def test_the_halves_are_the_models_own_vectors_and_languages_never_meet(engines: tuple[BgeSmallEn, E5Small]) -> None:
    english_engine, other_engine = engines
    model = ByLanguage(lambda: english_engine, lambda: other_engine)
    texts = ["How do I reset my password?", "我的密码忘了怎么重置？", "How can I reset my password?",  # noqa: RUF001
             "密码忘了，如何重置？"]  # noqa: RUF001
    vectors = model.encode(texts)
    assert by_language.DIMENSION == 768 and vectors.shape == (4, 768)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[[0, 2], :bge.DIMENSION], english_engine.encode([texts[0], texts[2]]))
    assert np.array_equal(vectors[[1, 3], bge.DIMENSION:], other_engine.encode([texts[1], texts[3]]))
    cosines = vectors @ vectors.T
    # English against Chinese: exactly zero, not merely small.
    assert cosines[0, 1] == 0.0 and cosines[0, 3] == 0.0 and cosines[2, 1] == 0.0 and cosines[2, 3] == 0.0
    assert cosines[0, 2] > 0.8 and cosines[1, 3] > 0.8


def test_the_config_accepts_exactly_the_registry_s_names() -> None:
    assert set(LOCAL_EMBEDDING_MODELS) == set(LOCAL_MODELS)
    for name in ("bge-small-en-v1.5", "bge-small-en-v1.5+multilingual-e5-small"):
        assert EmbedderConfig(provider="local", model=name).model == name


@pytest.mark.parametrize(("name", "dimension"), [
    (by_language.NAME, 768), (bge.NAME, 384), ("BAAI/bge-small-en-v1.5", 384), (e5.NAME, 384),
    ("all-MiniLM-L6-v2", 384)])
def test_each_local_model_has_its_own_dimension(name: str, dimension: int) -> None:
    embedder = LocalEmbedder(model=name)
    assert embedder.dimension == dimension


async def test_the_composite_embedder_warms_both_engines_at_start() -> None:
    embedder = LocalEmbedder(model=by_language.NAME, timeout_seconds=60)
    await embedder.start()
    model = embedder._model
    assert isinstance(model, ByLanguage) and model.loaded() == (True, True)
    vectors = await embedder.embed(["How do I reset my password?", "我的新卡什么时候到？"])  # noqa: RUF001
    assert vectors.shape == (2, 768) and float(vectors[0] @ vectors[1]) == 0.0
    await embedder.close()


async def test_without_start_english_alone_never_loads_e5() -> None:
    embedder = LocalEmbedder(model=by_language.NAME, timeout_seconds=60)
    vectors = await embedder.embed(["How do I reset my password?"])
    model = embedder._model
    assert isinstance(model, ByLanguage) and model.loaded() == (True, False)
    assert vectors.shape == (1, 768) and not vectors[0, bge.DIMENSION:].any()
    await embedder.close()


@pytest.mark.parametrize("name", [bge.NAME, by_language.NAME])
async def test_missing_weights_fail_the_start_naming_the_setup_command(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_MODELS_DIR", str(tmp_path))
    embedder = LocalEmbedder(model=name)
    with pytest.raises(WeightsMissing, match=r"fetch_models\.py"):
        await embedder.start()
    await embedder.close()


@pytest.mark.parametrize(("name", "collection"), [
    (e5.NAME, "strata_memory_384"), ("all-MiniLM-L6-v2", "strata_memory_384"),  # the names they always had
    (bge.NAME, "strata_memory_bge_small_en_384"),  # 384 too, but its vectors do not compare with e5's
    (by_language.NAME, "strata_memory_bge_small_en_e5_small_768")])
def test_long_term_memory_keeps_each_new_model_s_vectors_in_a_collection_of_their_own(name: str,
                                                                                        collection: str) -> None:
    from strata_runtime.memory.l3 import LongTermMemory
    from strata_runtime.stores.vectors import VectorConnector

    embedder = LocalEmbedder(model=name)
    memory = LongTermMemory(VectorConnector.__new__(VectorConnector), lambda: embedder, "strata_memory")
    assert memory.collection == collection
