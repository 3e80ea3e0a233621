"""The routing benchmark's MASSIVE data: two locales of the same utterances, split the same way.

The zh-CN against en-US comparison in bench/README.md is like for like only if both locales hold
the same utterances (MASSIVE ids) with the same intents, and the benchmark holds out the same
intents as out-of-scope in both.
"""

from __future__ import annotations

import csv
import re

import pytest

from bench.routing import DATA, load_massive_en, load_massive_zh, split

pytestmark = pytest.mark.unit

MASSIVE = DATA / "massive"
CJK = re.compile(r"[\u4e00-\u9fff]")


def rows(locale: str, split: str) -> list[dict[str, str]]:
    with open(MASSIVE / locale / f"{split}.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_two_locales_are_the_same_utterances_with_the_same_intents(split: str) -> None:
    en, zh = rows("en-US", split), rows("zh-CN", split)
    assert len(en) == len(zh) > 2000
    assert [(r["id"], r["category"]) for r in en] == [(r["id"], r["category"]) for r in zh]
    assert sum(bool(CJK.search(r["text"])) for r in zh) / len(zh) > 0.95
    assert not any(CJK.search(r["text"]) for r in en)
    assert len({r["category"] for r in en}) == {"train": 60, "test": 59}[split]  # no test line of one intent


def test_both_locales_hold_out_the_same_intents_as_out_of_scope() -> None:
    en, zh = load_massive_en(MASSIVE), load_massive_zh(MASSIVE)
    assert (en.name, en.language, zh.name, zh.language) == ("massive-en", "en", "massive-zh", "zh")
    kept_en, kept_zh = {i for _, i in en.train}, {i for _, i in zh.train}
    assert kept_en == kept_zh and len(kept_en) == 51  # 9 of 60 intents (15%) held out
    assert {i for _, i in en.test} <= kept_en and {i for _, i in zh.test} <= kept_zh
    assert len(en.oos_test) == len(zh.oos_test) > 0 and len(en.oos_train) == len(zh.oos_train) > 0
    assert len(en.test) == len(zh.test) and len(en.train) == len(zh.train)


def test_every_example_keeps_the_calibration_lines_apart_and_the_queries_untouched() -> None:
    """`--examples all`: every train utterance of an intent is an example but its calibration lines."""
    ds = load_massive_en(MASSIVE)
    test, oos_test = list(ds.test), list(ds.oos_test)
    train: dict[str, list[str]] = {}
    for text, intent in ds.train:
        train.setdefault(intent, []).append(text)
    skills, labelled = split(ds, None, 20)
    calibration: dict[str, list[str]] = {}
    for text, label in labelled:
        if label is not None:
            calibration.setdefault(label, []).append(text)
    assert {s.name for s in skills} == set(train)
    for s in skills:
        kept = calibration.get(s.name, [])
        assert len(kept) == min(20, len(train[s.name]) // 2)
        assert sorted([*s.examples, *kept]) == sorted(train[s.name])  # disjoint, nothing left out
    assert sum(len(s.examples) for s in skills) > sum(len(s.examples) for s in split(ds, 50, 20)[0])
    assert ds.test == test and ds.oos_test == oos_test
