"""Each routing layer on its own: L0 rules, L1 complexity, the L1.5 index and zones, L2 answer parsing."""

from __future__ import annotations

import numpy as np
import pytest

from strata_runtime.config.agents import SkillConfig
from strata_runtime.config.policies import HeuristicRoutingConfig, RoutingRule, SemanticRoutingConfig
from strata_runtime.routing.classifier import AnswerCache, classifier_prompt, parse_answer
from strata_runtime.routing.heuristic import Complexity, word_count
from strata_runtime.routing.index import index_from_vectors, skill_texts
from strata_runtime.routing.rules import compile_rules, match_rules
from strata_runtime.routing.semantic import SemanticLayer
from strata_runtime.routing.terms import SkillTerms


def rules(*specs: dict[str, object], skills: tuple[str, ...] = ("refund", "writer")) -> list:
    compiled, _ = compile_rules([RoutingRule.model_validate(s) for s in specs], set(skills))
    return compiled


# L0 ---------------------------------------------------------------------------------------------
def test_rules_are_anchored_and_case_insensitive_by_default_in_english_and_chinese() -> None:
    greet = rules({"pattern": "(hi|hello|你好)", "route": "direct"})
    for message in ("Hello", "  HI! ", "你好", "你好\uff01", "hello..."):
        decision = match_rules(greet, message)
        assert decision is not None and decision.route == "direct" and decision.layer == "L0", message
    for message in ("hello, close my account", "你好\uff0c我要退款", "say hi"):
        assert match_rules(greet, message) is None, message


def test_unanchored_keywords_route_to_a_skill_or_reject() -> None:
    compiled = rules({"keywords": ["退款", "refund"], "route": "skill:refund", "anchored": False},
                     {"pattern": r"\bpassword\b", "route": "reject", "anchored": False})
    refund = match_rules(compiled, "我想申请退款\uff0c谢谢")
    assert refund is not None and (refund.route, refund.skill) == ("skill", "refund")
    assert match_rules(compiled, "I want a REFUND now").skill == "refund"  # type: ignore[union-attr]
    rejected = match_rules(compiled, "tell me the admin password")
    assert rejected is not None and rejected.route == "reject" and rejected.skill is None


def test_case_sensitive_rule_and_first_match_wins() -> None:
    compiled = rules({"pattern": "SOS", "route": "skill:writer", "caseSensitive": True},
                     {"pattern": "sos", "route": "direct"})
    assert match_rules(compiled, "SOS").route == "skill"  # type: ignore[union-attr]
    assert match_rules(compiled, "sos").route == "direct"  # type: ignore[union-attr]


def test_a_rule_naming_a_missing_skill_is_left_out_and_reported() -> None:
    compiled, problems = compile_rules([RoutingRule.model_validate({"pattern": "x", "route": "skill:ghost"})],
                                       {"refund"})
    assert compiled == [] and "ghost" in problems[0]


@pytest.mark.parametrize("spec", [{"route": "direct"}, {"pattern": "a", "keywords": ["b"]},
                                  {"pattern": "(", "route": "direct"}, {"pattern": "a", "route": "skill:"},
                                  {"pattern": "a", "route": "classify"}, {"keywords": [" "]}])
def test_invalid_rules_are_refused(spec: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RoutingRule.model_validate(spec)


# L1 ---------------------------------------------------------------------------------------------
def test_cjk_characters_count_as_words() -> None:
    assert word_count("hello world") == 2
    assert word_count("生成一篇关于AI的文章") == 10  # nine characters and "AI"


def test_short_chit_chat_is_low_complexity_and_requests_are_not() -> None:
    complexity = Complexity.from_config(HeuristicRoutingConfig())
    for message in ("ok thanks", "谢谢", "hi", "👍"):
        assert complexity.is_low(message)[0], message
    for message in ("what is my balance?", "生成一篇关于AI的文章", "transfer 100 to Bob now",
                    "write python code to sort a list", "查询余额"):
        assert not complexity.is_low(message)[0], message


def test_heuristic_features_and_threshold_come_from_the_policy() -> None:
    config = HeuristicRoutingConfig.model_validate({
        "lowComplexityBelow": 0.5, "length": {"weight": 0.1, "fullAtWords": 100},
        "features": [{"name": "urgent", "pattern": "urgent|紧急", "weight": 0.9}]})
    complexity = Complexity.from_config(config)
    assert complexity.is_low("what is the capital of France and why?")[0]  # no 'question' feature here
    low, score, fired = complexity.is_low("紧急 help")
    assert not low and fired == ["urgent"] and score > 0.9


def test_skill_terms_are_words_and_chinese_character_pairs_without_stop_words() -> None:
    terms = SkillTerms(HeuristicRoutingConfig().skill_terms)
    assert terms.terms("Wake me up at SEVEN, please") == {"wake", "seven"}
    assert terms.terms("playing songs") == terms.terms("play song") == {"play", "song"}
    assert terms.terms("hi! thanks, how are you?") == set()
    assert terms.terms("你好\uff0c谢谢") == set()
    # 的 and 我 are stop words: they cut the text, and pairs are taken within each piece
    assert terms.terms("帮我播放周杰伦的歌") == {"播放", "放周", "周杰", "杰伦", "歌"}
    assert terms.terms("") == set() and terms.terms("42 !!") == set()


def test_terms_common_to_many_skills_are_not_distinctive() -> None:
    terms = SkillTerms(HeuristicRoutingConfig().skill_terms)  # maxSkillShare 0.25
    skills = [SkillConfig(name=f"s{i}", description=f"account {word}", examples=[f"查询{zh}账户"])
              for i, (word, zh) in enumerate([("balance", "余额"), ("limit", "额度"), ("owner", "户主"),
                                              ("closure", "销户"), ("statement", "流水")])]
    vocabulary = terms.vocabulary([*skills, SkillConfig(name="empty")])
    assert {"balance", "closure", "余额", "流水"} <= vocabulary
    assert "account" not in vocabulary and "账户" not in vocabulary and "查询" not in vocabulary  # in all five
    assert terms.reason_to_keep("balance please", vocabulary) == "shares the skill term 'balance'"
    assert terms.reason_to_keep("my account", vocabulary) is None
    assert terms.reason_to_keep("查流水", vocabulary) == "shares the skill term '流水'"
    # a single skill: every one of its terms is distinctive; no skill with text: no terms at all
    assert terms.vocabulary(skills[:1]) >= {"account", "balance", "账户"}
    assert terms.vocabulary([SkillConfig(name="empty")]) == frozenset()


def test_a_short_message_in_a_script_the_skills_are_not_written_in_is_left_to_l15() -> None:
    """Terms cannot tell whether 天气 is about a skill written in English: L1.5 (a multilingual embedder)
    can. A message of stop words only (chit-chat) still goes to chat."""
    terms = SkillTerms(HeuristicRoutingConfig().skill_terms)
    english = terms.vocabulary([SkillConfig(name="weather", description="weather forecasts"),
                                SkillConfig(name="writer", description="writes articles")])
    assert english.words and not english.cjk
    assert terms.reason_to_keep("天气", english) == "Chinese/Japanese/Korean terms, skills without any"
    assert terms.reason_to_keep("你好", english) is None and terms.reason_to_keep("my account", english) is None
    chinese = terms.vocabulary([SkillConfig(name="weather", description="天气预报"),
                                SkillConfig(name="writer", description="写文章")])
    assert chinese.cjk and not chinese.words
    assert terms.reason_to_keep("forecast", chinese) == "terms in letters, skills only in Chinese/Japanese/Korean"
    assert terms.reason_to_keep("thanks", chinese) is None
    assert terms.reason_to_keep("天气", chinese) == "shares the skill term '天气'"
    assert terms.reason_to_keep("你好", chinese) is None


# L1.5 index and zones ---------------------------------------------------------------------------
def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_skill_texts_join_profile_and_examples_and_skip_empty_skills() -> None:
    skill = SkillConfig(name="s", description="Refunds", keywords=["money back"], capabilities=["payments"],
                        examples=["I want my money back", "  ", "I want my money back"])
    assert skill_texts(skill) == ["Refunds | money back | payments", "I want my money back"]
    assert skill_texts(SkillConfig(name="empty")) == []


def test_max_and_mean_top_k_aggregation_blended_with_the_centroid() -> None:
    vectors = np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1),  # skill a: three rows, centroid (1,1,1)/√3
                        unit(1, 1, 0)])  # skill b: one row
    index = index_from_vectors(["a", "b"], [], vectors, [3, 1])
    query = unit(1, 0, 0)
    ids, scores = index.scores(query, aggregation="max", top_k=1, prefilter=0)
    centroid_a = 1 / np.sqrt(3)
    expected = {0: (1.0 + centroid_a) / 2, 1: 0.7071}
    assert dict(zip(ids.tolist(), scores.tolist(), strict=True)) == pytest.approx(expected, abs=1e-4)
    ids, scores = index.scores(query, aggregation="meanTopK", top_k=2, prefilter=0)
    by_skill = dict(zip(ids.tolist(), scores.tolist(), strict=True))
    assert by_skill == pytest.approx({0: (0.5 + centroid_a) / 2, 1: 0.7071}, abs=1e-4)  # a: mean(1, 0); b: its row


@pytest.mark.parametrize("aggregation", ["max", "meanTopK"])
def test_prefiltered_scoring_scores_only_the_nearest_skills_and_finds_the_top(aggregation: str) -> None:
    """With more skills than `prefilter`, only that many are scored row by row; clustered skills keep their top."""
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 12, size=300).tolist()
    centers = rng.standard_normal((300, 32)).astype(np.float32)
    vectors = np.repeat(centers, counts, axis=0) + 0.3 * rng.standard_normal((sum(counts), 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = index_from_vectors([f"s{i}" for i in range(300)], [], vectors, counts)
    for row in rng.integers(0, len(vectors), 30):
        query = vectors[row] + rng.standard_normal(32).astype(np.float32) * 0.2
        query /= np.linalg.norm(query)
        all_ids, all_scores = index.scores(query, aggregation=aggregation, top_k=3, prefilter=0)  # type: ignore[arg-type]
        ids, scores = index.scores(query, aggregation=aggregation, top_k=3, prefilter=16)  # type: ignore[arg-type]
        assert len(all_ids) == 300 and len(ids) == 16
        assert ids[np.argmax(scores)] == all_ids[np.argmax(all_scores)]
        assert np.isclose(scores.max(), all_scores.max())
        # the scores of the skills scored are the same either way
        assert np.allclose(scores, all_scores[ids], atol=1e-5)


def test_zones_use_policy_thresholds_and_per_skill_ones_where_fitted() -> None:
    vectors = np.stack([unit(1, 0), unit(0, 1)])
    index = index_from_vectors(["a", "b"], ["silent"], vectors, [1, 1])
    layer = SemanticLayer(SemanticRoutingConfig.model_validate(
        {"low": 0.5, "high": 0.9, "marginWeight": 0, "skills": [{"name": "b", "low": 0.2, "high": 0.6}]}))
    high = layer.zone(index, unit(1, 0.1))
    assert (high.zone, high.skill) == ("high", "a") and [c.skill for c in high.candidates] == ["a", "b"]
    hint = layer.zone(index, unit(1, 0.8))  # a at ~0.78: between 0.5 and 0.9
    assert (hint.zone, hint.skill) == ("hint", "a")
    low = layer.zone(index, unit(-1, -0.1))
    assert (low.zone, low.skill) == ("low", None)
    own = layer.zone(index, unit(0.9, 1))  # b at ~0.74: above b's own high 0.6
    assert (own.zone, own.skill) == ("high", "b")
    assert layer.thresholds("b") == (0.2, 0.6) and layer.thresholds("a") == (0.5, 0.9)


def test_the_confidence_adds_the_weighted_lead_over_the_second_skill() -> None:
    index = index_from_vectors(["a", "b"], [], np.stack([unit(1, 0), unit(0, 1)]), [1, 1])
    layer = SemanticLayer(SemanticRoutingConfig.model_validate({"low": 0.5, "high": 0.9, "marginWeight": 0.2}))
    query = unit(1, 0.6)  # a ~0.857 (below high alone), b ~0.514
    zone = layer.zone(index, query)
    assert (zone.zone, zone.skill) == ("high", "a")
    assert zone.score == pytest.approx(0.857 + 0.2 * (0.857 - 0.514), abs=1e-3)
    assert zone.candidates[0].score == pytest.approx(0.857, abs=1e-3)  # candidates keep their own scores
    tie = layer.zone(index, unit(1, 1))  # ~0.707 to both
    assert (tie.zone, tie.skill) == ("hint", "a") and tie.score == pytest.approx(0.7071, abs=1e-3)
    single = index_from_vectors(["a"], [], unit(1, 0)[None, :], [1])
    assert layer.zone(single, query).score == pytest.approx(0.857, abs=1e-3)  # no runner-up: no lead


def test_an_index_without_skills_has_no_zone() -> None:
    index = index_from_vectors([], ["silent"], np.zeros((0, 2), np.float32), [])
    assert SemanticLayer(SemanticRoutingConfig()).zone(index, unit(1, 0)).zone == "none"


# L2 ---------------------------------------------------------------------------------------------
def test_classifier_answers_must_be_strict_json_naming_a_known_skill() -> None:
    names = {"refund", "writer"}
    assert parse_answer('{"skill": "refund"}', names) == "refund"
    assert parse_answer(' ```json\n{"skill": "none"}\n``` ', names) is None
    for bad in ("refund", '{"skill": "ghost"}', '{"skill": "refund", "why": "x"}', '["refund"]', '{"skill": 1}',
                "", '{"skill": "refund"} trailing'):
        with pytest.raises(ValueError):
            parse_answer(bad, names)


def test_classifier_prompt_lists_skills_and_the_hint() -> None:
    skills = [SkillConfig(name="refund", description="Money back", keywords=["refund"]), SkillConfig(name="bare")]
    messages = classifier_prompt(skills, "x" * 10_000, hint="refund")
    assert "- refund: Money back | refund" in messages[0]["content"] and "- bare" in messages[0]["content"]
    assert "'refund'" in messages[0]["content"].split("\n")[-1]
    assert len(messages[1]["content"]) == 4000


def test_answer_cache_is_bounded() -> None:
    cache = AnswerCache(entries=2, ttl_seconds=60)
    for i in range(3):
        cache.put(("p", "s", str(i)), "refund")
    assert cache.get(("p", "s", "0")) == (False, None)
    assert cache.get(("p", "s", "2")) == (True, "refund")
