"""The hit guard vetoes semantic hits between queries that ask different things."""

from __future__ import annotations

import pytest

from strata_runtime.cache.guard import check


@pytest.mark.parametrize(("query", "cached", "reason"), [
    ("What is 2+3?", "What is 2+4?", "numbers"),
    ("How do I enable 2FA?", "How do I disable 2FA?", "polarity"),
    ("What is the weather in Paris?", "What is the weather in London?", "entities"),
    ("Why is my card working?", "Why is my card not working?", "negation"),
    ('Search the docs for "refund policy"', 'Search the docs for "privacy policy"', "quoted"),
    ("cancel my card", "freeze my card", "substitution"),
    ("转账3000元给妈妈", "转账5000元给妈妈", "numbers"),
    ("转账三千元", "转账五千元", "numbers"),
    ("我的卡不能用了", "我的卡能用了", "negation"),
    ("别关闭我的账户", "关闭我的账户", "negation"),
    ("巴黎的天气怎么样", "伦敦的天气怎么样", "substitution"),
    ("如何开启两步验证", "如何关闭两步验证", "polarity"),
    ("《红楼梦》的作者是谁", "《西游记》的作者是谁", "quoted"),
])
def test_guard_rejects_queries_that_differ_in_meaning(query: str, cached: str, reason: str):
    verdict = check(query, cached)
    assert not verdict.allowed
    assert verdict.reason == reason


@pytest.mark.parametrize(("query", "cached"), [
    ("How do I reset my password?", "How can I reset my password?"),
    ("Why is my card not working?", "Why isn't my card working?"),
    ("I still have not received my new card", "My new card has not arrived yet"),
    ("如何重置密码", "怎么重置密码"),
    ("what is the capital of france", "What is the capital of France?"),
])
def test_guard_allows_paraphrases(query: str, cached: str):
    assert check(query, cached).allowed
