"""The verifier calibration's outside pair sets and its leave-one-source-out switch (bench/).

Pure logic on small fixtures: the readers of the outside layouts (MRPC, LCQMC-style TSV), the
seeded class-balanced sample and its halves, which sources a fit reads (a left-out or measure-only
source never), and the CLI refusing a non-default fit that would overwrite the shipped parameters.
"""

from __future__ import annotations

import dataclasses
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from bench import _cache_calibrate as calibrate
from bench import _calibration_data as data

pytestmark = pytest.mark.unit


def test_tsv3_reader_skips_bad_lines_identical_sides_and_repeats() -> None:
    lines = [
        "花呗怎么还款\t花呗如何还款\t1",
        "花呗怎么还款\t借呗怎么还款\t0",
        "only two columns\t1",
        "a\tb\tmaybe",  # not a 0 / 1 label
        "同一句\t同一句\t1",  # an exact hit, not a semantic one
        "花呗怎么还款\t花呗如何还款\t0",  # a repeated pair keeps its first label
        " 前后空格 \t\t1",  # an empty side
    ]
    pairs = data.read_pair_lines(lines, "tsv3")
    assert [(p.a, p.b, p.same) for p in pairs] == [
        ("花呗怎么还款", "花呗如何还款", True),
        ("花呗怎么还款", "借呗怎么还款", False),
    ]


def test_mrpc_reader_drops_the_header_and_its_byte_order_mark() -> None:
    lines = [
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        "1\t1\t2\tThe cat sat on the mat.\tA cat was sitting on the mat.",
        "0\t3\t4\tShares rose 5% on Monday.\tShares fell 5% on Monday.",
        "1\t5\t6\ttoo few columns",
    ]
    pairs = data.read_pair_lines(lines, "mrpc")
    assert [(p.a, p.same) for p in pairs] == [("The cat sat on the mat.", True), ("Shares rose 5% on Monday.", False)]
    with pytest.raises(ValueError):
        data.read_pair_lines(lines, "csv")


def test_sts_reader_keeps_paraphrases_and_look_alikes_not_unrelated_pairs() -> None:
    lines = ["一架飞机要起飞了。\t一架飞机正在起飞。\t5", "一个男人开着他的车。\t一个男人在开车。\t4",
             "三个男孩在跳舞。\t孩子们在跳舞。\t3", "一个男人在切面包。\t一个人在切洋葱。\t2", "坏\t行\tx",
             "一个男人在划独木舟。\t一个人在弹竖琴。\t0"]  # unrelated: too easy a negative, left out
    assert [p.same for p in data.read_pair_lines(lines, "sts")] == [True, True, False, False]


def test_bimpm_reader_joins_corenlp_tokens_back_into_questions() -> None:
    lines = [
        "1\tHow can one root android devices ?\tHow do I root an Android device ?\t391187",
        "0\tWhat is your review of Mahesh Murthy -LRB- investor -RRB- ?\tI do n't know , it 's $ 100 .\t218650",
        "0\t`` How '' `` great '' '' was Alexander the Great ? ''\tWho was Alexander the Great ?\t54980",
        "1\tonly three\tcolumns",
        "2\tWhat ?\tWhy ?\t7",  # not a 0 / 1 label
    ]
    pairs = data.read_pair_lines(lines, "bimpm")
    assert [(p.a, p.b, p.same) for p in pairs] == [
        ("How can one root android devices?", "How do I root an Android device?", True),
        ("What is your review of Mahesh Murthy (investor)?", "I don't know, it's $100.", False),
        ("How great was Alexander the Great?", "Who was Alexander the Great?", False),
    ]
    assert data.detokenise("I 'm sure they 're here -LSB- sic -RSB- !") == "I'm sure they're here [sic]!"


def test_both_quora_samples_are_english_measure_only_sets() -> None:
    for name in ("qqp-dev", "qqp-test"):
        spec = data.EXTERNAL_PAIR_SETS[name]
        assert (spec.layout, spec.language) == ("bimpm", "en") and name not in data.FITTED
    assert data.EXTERNAL_PAIR_SETS["qqp-dev"].path != data.EXTERNAL_PAIR_SETS["qqp-test"].path


def write_set(root: Path, name: str, n_pos: int, n_neg: int) -> None:
    path = root / data.EXTERNAL_PAIR_SETS[name].path
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"问题{i}\t问法{i}\t1" for i in range(n_pos)] + [f"问题{i}\t别的{i}\t0" for i in range(n_neg)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_outside_sample_is_seeded_class_balanced_and_halved_by_crc32(tmp_path: Path) -> None:
    write_set(tmp_path, "lcqmc", 40, 25)
    everything = data.external_pairs("lcqmc", "all", 10, tmp_path)
    assert sum(p.same for p in everything) == 10 and sum(not p.same for p in everything) == 10
    assert everything == data.external_pairs("lcqmc", "all", 10, tmp_path)  # the same sample every run
    more = data.external_pairs("lcqmc", "all", 30, tmp_path)
    assert sum(p.same for p in more) == 30 and sum(not p.same for p in more) == 25  # all there is
    train = data.external_pairs("lcqmc", "train", 10, tmp_path)
    test = data.external_pairs("lcqmc", "test", 10, tmp_path)
    assert sorted(map(repr, train + test)) == sorted(map(repr, everything))
    assert all(zlib.crc32(f"{p.a}\t{p.b}".encode()) % 2 == 0 for p in train)
    assert all(zlib.crc32(f"{p.a}\t{p.b}".encode()) % 2 == 1 for p in test)


def test_only_the_sets_present_under_the_pairs_directory_are_measured(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("STRATA_PAIRS_DATA", raising=False)
    assert data.external_available() == ()  # no directory given: no outside column
    write_set(tmp_path, "afqmc", 3, 3)
    monkeypatch.setenv("STRATA_PAIRS_DATA", str(tmp_path))
    assert data.external_available() == ("afqmc",)


def test_fitted_sources_leave_one_out_and_add_an_outside_set() -> None:
    # the shipped parameters read licensed sources only; the outside pair sets are measure-only
    assert calibrate.fitted_sources() == data.FITTED == ("banking77", "massive-zh", "paws-wiki-en", "paws-x-zh")
    assert calibrate.fitted_sources(("paws-wiki-en", "massive-zh")) == ("banking77", "paws-x-zh")
    assert calibrate.fitted_sources((), ("afqmc", "lcqmc")) == (*data.FITTED, "afqmc", "lcqmc")
    with pytest.raises(ValueError):
        calibrate.fitted_sources(("lcqmc",))  # not fitted by default: nothing to leave out
    with pytest.raises(ValueError):
        calibrate.fitted_sources(("clinc150",))  # measure-only: nothing to leave out
    with pytest.raises(ValueError):
        calibrate.fitted_sources((), ("banking77",))  # not an outside pair set
    with pytest.raises(ValueError):
        calibrate.fitted_sources(data.FITTED)


class FakeVectors:
    """A unit vector per text from its crc32 (no embedder): enough for pair probes."""

    def __init__(self, texts: list[str]):
        self.vectors = {}
        for t in texts:
            v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(8).astype(np.float32)
            self.vectors[t] = v / np.linalg.norm(v)


def test_the_fit_reads_fitted_sources_only_and_the_table_measures_the_others(tmp_path: Path, monkeypatch) -> None:
    write_set(tmp_path, "lcqmc", 30, 30)
    write_set(tmp_path, "afqmc", 30, 30)
    monkeypatch.setenv("STRATA_PAIRS_DATA", str(tmp_path))
    sizes = data.Sizes(banking_train=0, banking_test=0, pairs=0, intents=0, external=12)  # outside sets only
    fitted, external = ("lcqmc",), ("lcqmc", "afqmc")
    vectors = FakeVectors(data.all_texts(sizes, fitted, external))
    train = calibrate.load_probes("train", vectors, sizes, fitted, external)  # type: ignore[arg-type]
    assert {p.source for p in train.items} == {"lcqmc"}  # not afqmc (measure-only), no default source
    halves = {repr(p) for p in data.external_pairs("lcqmc", "train", 12)}
    assert {repr(data.Pair(p.candidates[0][0], p.query, p.positive)) for p in train.items} == halves
    # measured: lcqmc's other half, afqmc's whole sample
    measured = calibrate.load_probes("test", vectors, sizes, fitted, external).items  # type: ignore[arg-type]
    assert {p.source for p in measured} == {"lcqmc", "afqmc"}
    by = {s: [p for p in measured if p.source == s] for s in external}
    assert len(by["afqmc"]) == 24 and len(by["lcqmc"]) == len(data.external_pairs("lcqmc", "test", 12))


def test_a_fit_on_other_sources_never_writes_the_shipped_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="params-out"):
        calibrate.run(True, fitted=("banking77", "paws-x-zh"), external=())
    with pytest.raises(ValueError, match="pairs"):  # a fit on an outside pair set needs --pairs DIR
        calibrate.run(True, fitted=(*data.FITTED, "lcqmc"), params_path=tmp_path / "p.json", external=())


def test_the_cli_wants_an_output_file_for_leave_one_out(monkeypatch, capsys) -> None:
    from bench import cache

    monkeypatch.setattr(sys, "argv", ["bench.cache", "calibrate", "--fit", "--leave-out", "paws-wiki-en"])
    with pytest.raises(SystemExit):
        cache.main()
    assert "--params-out" in capsys.readouterr().err


def test_a_fit_that_leaves_a_language_without_data_says_so(tmp_path: Path, monkeypatch) -> None:
    write_set(tmp_path, "lcqmc", 30, 30)  # Chinese only: no English model could be fitted
    monkeypatch.setenv("STRATA_PAIRS_DATA", str(tmp_path))
    sizes = data.Sizes(banking_train=0, banking_test=0, pairs=0, intents=0, external=12)
    vectors = FakeVectors(data.all_texts(sizes, ("lcqmc",), ("lcqmc",)))
    out = tmp_path / "params.json"
    with pytest.raises(ValueError, match="no en fitting data"):
        calibrate.fit(vectors, "e5", out, sizes, ("lcqmc",), external=("lcqmc",))  # type: ignore[arg-type]
    assert not out.exists()


def shape_probes(n_look_alikes: int) -> list[calibrate.Probe]:
    """Near-duplicate pairs (a word added): 40 paraphrases at cosine 0.99, and `n_look_alikes`
    look-alikes of the same shape at cosine 0.96 among 50 non-paraphrases (one served is 2%)."""
    probes = [calibrate.Probe("s", f"how do I close my account {i} please", [(f"how do I close my account {i}", 0.99,
                                                                               True)], True) for i in range(40)]
    probes += [calibrate.Probe("s", f"where is card {i} today", [(f"where is card {i}", 0.96, False)], False)
               for i in range(n_look_alikes)]
    probes += [calibrate.Probe("s", f"question {i}", [(f"other words entirely {i}", 0.5, False)], False)
               for i in range(50 - n_look_alikes)]
    return probes


def test_a_shape_no_fitting_look_alike_tested_takes_the_fallback_or_is_never_served() -> None:
    from strata_runtime.cache import verifier

    n = len(verifier.FEATURES)  # a model that refuses everything: only the shapes can serve
    model = verifier.LanguageModel(0.0, (0.0,) * n, (1.0,) * n, (0.0,) * n, -40.0, ((0.01, 0.9),))
    allow = lambda q, c: type("V", (), {"allowed": True})()  # noqa: E731
    # enough look-alikes of the shape: its cosine is fitted above theirs
    tested = calibrate._shape_cosines(shape_probes(calibrate.MIN_SHAPE_NEGATIVES), model, allow)
    assert isinstance(tested, verifier.LanguageModel)
    assert 0.96 < tested.near[0][1] <= 0.99
    # none: every cosine on the grid would "keep" the rate; never served, or the fallback's cosine
    assert calibrate.MIN_SHAPE_NEGATIVES == 1
    untested = calibrate._shape_cosines(shape_probes(0), model, allow)
    assert isinstance(untested, verifier.LanguageModel) and untested.near == ((0.01, 2.0),)
    fallback = dataclasses.replace(model, near=((0.01, 0.995),), reworded=((0.01, 0.985),))
    borrowed = calibrate._shape_cosines(shape_probes(0), model, allow, fallback=fallback)
    assert isinstance(borrowed, verifier.LanguageModel) and borrowed.near == ((0.01, 0.995),)
    assert borrowed.reworded == ((0.01, 0.985),)  # no rewording look-alike either
