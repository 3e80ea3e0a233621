"""The semantic-cache verifier: features, fitting, the shipped parameters, and real sentence pairs."""

from __future__ import annotations

import dataclasses

import pytest

from strata_runtime.cache import verifier
from strata_runtime.cache.verifier import features, fit_logistic, language, verifier_for
from strata_runtime.embeddings import LocalEmbedder

ORDER = verifier.FEATURES.index("order")


def test_language_is_zh_for_han_text_and_en_otherwise() -> None:
    assert language("我的银行卡还没到") == "zh"
    assert language("我的 Visa 卡还没到") == "zh"
    assert language("Where is my card?") == "en"
    assert language("Où est ma carte ?") == "en"


def test_word_order_is_visible_to_the_features() -> None:
    same = features("flights from Paris to Rome", "flights from Paris to Rome", 1.0)
    swapped = features("flights from Paris to Rome", "flights from Rome to Paris", 0.99)
    assert same[ORDER] == 1.0 and swapped[ORDER] < 1.0
    zh = features("从北京飞往上海的航班", "从上海飞往北京的航班", 0.99)  # character-level path
    assert zh[ORDER] < 1.0


def test_fit_logistic_separates_a_separable_toy_set() -> None:
    x = [[0.1 * i, 1.0] for i in range(20)]
    y = [int(i >= 10) for i in range(20)]
    mean, scale, weights, bias = fit_logistic(x, y)
    model = verifier.LanguageModel(0.0, tuple(mean), tuple(scale), tuple(weights), bias, ((0.01, 0.5),))
    assert model.score([1.9, 1.0]) > 0.9
    assert model.score([0.0, 1.0]) < 0.1


def test_the_shipped_parameters_cover_both_languages_and_stricter_targets_mean_higher_thresholds() -> None:
    strict = verifier_for("multilingual-e5-small", 0.002)
    loose = verifier_for("multilingual-e5-small", 0.05)
    assert strict is not None and loose is not None
    for lang in ("en", "zh"):
        assert strict.models[lang].threshold_for(0.002) >= loose.models[lang].threshold_for(0.05)
    assert verifier_for("an-embedder-nobody-fitted", 0.01) is None


def test_a_threshold_of_one_never_serves_even_a_score_that_rounds_to_one() -> None:
    n = len(verifier.FEATURES)
    # cosine-only model with a tiny scale: any cosine above the mean scores 1.0 in floating point
    model = verifier.LanguageModel(0.0, (0.5,) + (0.0,) * (n - 1), (1e-3,) + (1.0,) * (n - 1),
                                   (1.0,) + (0.0,) * (n - 1), 0.0, ((0.01, 1.0),))
    v = verifier.Verifier({"en": model, "zh": model}, 0.01)
    decision = v.check("How do I reset my password?", "How can I reset my password?", 0.99)
    assert decision.score == 1.0
    assert decision.allowed is False and decision.reason == "verifier"


def test_edit_shape_tells_added_words_from_moved_or_replaced_ones() -> None:
    # a word added: nothing moved, nothing replaced
    assert verifier.edit_shape("check my card delivery", "check my card delivery please")[:2] == (0, 0)
    # roles swapped: a content word moved (Han characters count one by one)
    assert verifier.edit_shape("flights from Berlin to Madrid", "flights from Madrid to Berlin")[0] > 0
    assert verifier.edit_shape("张三给李四转了钱", "李四给张三转了钱")[0] > 0
    # a content word replaced by another in an aligned stretch
    assert verifier.edit_shape("the racial riots of 1968", "the historic riots of 1968")[1] == 1
    # a moved function word is no swap of meaning
    assert verifier.edit_shape("elected the first mayor", "elected first mayor the")[0] == 0
    assert verifier.shape("How can I check the status of my card delivery?",
                          "How can I check the status of my card delivery please?") == "near"
    assert verifier.shape("The church was designed by the architect and built by the parish .",
                          "The church was built by the architect and designed by the parish .") != "near"


def test_shapes_of_pairs() -> None:
    assert verifier.shape("How do I top up my card?", "What is the way to add money to my card?") == "reworded"
    assert verifier.shape("check my card delivery", "check my card delivery please") == "near"
    assert verifier.shape("flights from Berlin to Madrid", "flights from Madrid to Berlin") is None  # moved
    assert verifier.shape("the racial riots in the city of 1968", "the historic riots in the city of 1968") is None


def test_a_chinese_near_duplicate_only_adds_characters_to_one_side() -> None:
    assert verifier.shape("第一届世界杯在哪里举行", "第一届世界杯在哪举行") == "near"
    assert verifier.shape("铁观音的保质期是多久", "铁观音茶叶的保质期是多久呢") == "near"
    # 中学 / 高中: 学 dropped and 高 added align as two edits, no replacement; it is one replaced word
    assert verifier.edit_shape("一所位于郊区的中学", "一所位于郊区的高中")[:2] == (0, 0)
    assert verifier.shape("一所位于郊区的中学", "一所位于郊区的高中") is None


def test_a_model_fitted_without_shape_cosines_never_serves_by_that_rule() -> None:
    n = len(verifier.FEATURES)
    model = verifier.LanguageModel(0.0, (0.0,) * n, (1.0,) * n, (0.0,) * n, -40.0, ((0.01, 0.9),))
    assert min(model.shape_cosines(0.01).values()) > 1.0
    near = ("How can I check the status of my card delivery please?", "How can I check the status of my card delivery?")
    reworded = ("How do I top up my card?", "What is the way to add money to my card?")
    swapped = ("flights from Berlin to Madrid", "flights from Madrid to Berlin")
    for asked, stored in (near, reworded, swapped):
        assert verifier.Verifier({"en": model, "zh": model}, 0.01).check(asked, stored, 0.9999).allowed is False
    fitted = dataclasses.replace(model, near=((0.005, 0.999), (0.01, 0.99)), reworded=((0.01, 0.97),))
    assert verifier.LanguageModel.from_json(fitted.to_json()) == fitted
    at_default = verifier.Verifier({"en": fitted, "zh": fitted}, 0.01)
    assert at_default.check(*near, 0.995).allowed is True
    assert at_default.check(*near, 0.98).allowed is False
    assert at_default.check(*reworded, 0.975).allowed is True
    assert at_default.check(*reworded, 0.96).allowed is False
    assert at_default.check(*swapped, 0.9999).allowed is False  # no shape: the model alone decides
    stricter = verifier.Verifier({"en": fitted, "zh": fitted}, 0.005)
    assert stricter.check(*near, 0.995).allowed is False
    assert stricter.check(*reworded, 0.999).allowed is False  # no rewording cosine fitted for 0.005


# Near duplicates (words added or dropped, nothing moved or replaced) at a cosine this close are served
# by the shipped parameters; the logistic model alone refused all three at the default target.
@pytest.mark.parametrize(("stored", "asked"), [
    ("How can I check the status of my card delivery?", "How can I check the status of my card delivery please?"),
    ("The bridge over the river was rebuilt by the town council after the flood of that year .",
     "The bridge over the river was rebuilt by the town council after the great flood of that year ."),
    ("She studied music at the conservatory and later taught piano in the capital .",
     "She studied music at the conservatory and later taught piano in the capital city ."),
])
def test_near_duplicates_are_served_at_a_very_high_cosine(stored: str, asked: str) -> None:
    v = verifier_for("multilingual-e5-small", 0.01)
    assert v is not None
    assert v.check(asked, stored, 0.999).allowed is True


# Rewordings of a short question where no content word changed place, at a cosine the embedder gives
# close paraphrases: served by the shipped parameters; the logistic model alone refused both.
@pytest.mark.parametrize(("stored", "asked"), [
    ("How long will it take for the money to reach my account?",
     "How long do I have to wait for the money to reach my account?"),
    ("How old do I need to be to open an account?", "How old do you have to be to get an account?"),
    ("Are there fees for adding money with a foreign card?",
     "Are there any extra fees for adding money into the foreign card?"),
    ("I got my new card. How do I activate it?", "I just got my card and want to use it, how do I activate my card?"),
])
def test_short_rewordings_are_served_at_a_high_cosine(stored: str, asked: str) -> None:
    v = verifier_for("multilingual-e5-small", 0.01)
    assert v is not None
    assert v.check(asked, stored, 0.98).allowed is True


# Generic pairs, checked with the shipped parameters at a cosine as high as the embedder gives
# look-alikes (0.97-0.99): what must be refused is refused by the guard or the verifier, whatever
# the embedding says; what must be served is a harmless rewording of the same question.
@pytest.mark.parametrize(("stored", "asked"), [
    ("Transfer 100 dollars to my savings account", "Transfer 500 dollars to my savings account"),  # number
    ("Why was I charged a fee of 2 euros?", "Why was I charged a fee of 20 euros?"),
    ("My card payment was declined", "My card payment was not declined"),  # negation
    ("I can use my card abroad", "I can't use my card abroad"),
    ("Alice sent money to Bob", "Bob sent money to Alice"),  # swapped roles
    ("flights from Berlin to Madrid", "flights from Madrid to Berlin"),
    ("The church was designed by the architect and built by the parish .",
     "The church was built by the architect and designed by the parish ."),
    ("张三给李四转了钱", "李四给张三转了钱"),
    ("把钱从储蓄账户转到支票账户", "把钱从支票账户转到储蓄账户"),
    ("我的卡被拒绝了", "我的卡没有被拒绝"),
    ("转账100元需要多久", "转账500元需要多久"),
])
@pytest.mark.parametrize("cosine", [0.97, 0.99, 0.9995])
def test_generic_look_alikes_are_refused(stored: str, asked: str, cosine: float) -> None:
    v = verifier_for("multilingual-e5-small", 0.01)
    assert v is not None
    decision = v.check(asked, stored, cosine)
    assert decision.allowed is False, decision


@pytest.mark.parametrize(("stored", "asked"), [
    ("How do I reset my password?", "how do I reset my password"),
    ("What is the exchange rate for euros?", "What is the exchange rate for euros"),
    ("我的银行卡还没有收到", "我的银行卡还没有收到。"),
])
def test_harmless_rewordings_are_served(stored: str, asked: str) -> None:
    v = verifier_for("multilingual-e5-small", 0.01)
    assert v is not None
    decision = v.check(asked, stored, 0.995)
    assert decision.allowed is True, decision


@pytest.mark.parametrize(("stored", "asked"), [
    ("蚂蚁的牙齿是什么颜色的？", "蚂蚁的牙齿是什么颜色的啊"),  # noqa: RUF001  particles
    ("上海应用技术学院怎么样？", "请问上海应用技术学院如何"),  # noqa: RUF001  courtesy, 如何 = 怎么样
    ("我的闹钟什么时候响", "我的闹钟啥时候响啊"),  # 啥 = 什么
    ("推荐几本好看的穿越小说", "好看的穿越小说推荐几本"),  # the topic put first
    ("打电话给表弟", "给表弟打电话"),
])
@pytest.mark.parametrize("model", ["multilingual-e5-small", "bge-small-en-v1.5+multilingual-e5-small"])
def test_the_same_chinese_question_with_other_particles_is_served_unscored(stored: str, asked: str,
                                                                         model: str) -> None:
    v = verifier_for(model, 0.01)
    assert v is not None
    # A cosine the fitted model refuses on its own (below its score threshold for these pairs).
    assert v.models["zh"].score(features(asked, stored, 0.95)) < v._thresholds["zh"]
    assert v.check(asked, stored, 0.95) == verifier.Decision(True, None, 1.0)


@pytest.mark.parametrize(("stored", "asked", "reason"), [
    ("七朵玫瑰是什么意思", "九朵玫瑰是什么意思啊", "numbers"),  # the guard still reads first
    ("我的卡被拒绝了吗", "我的卡没有被拒绝吧", "negation"),
    ("你爱我吗", "我爱你吗", "verifier"),  # the same characters in another order are not the same question
    ("张三给李四转钱", "李四给张三转钱", "verifier"),  # ... unless the two halves only changed places
    ("申请退款怎么办", "退款怎么办", "short-edit"),  # 请 is a courtesy only at the start
])
def test_what_particles_cannot_hide_is_still_refused(stored: str, asked: str, reason: str) -> None:
    v = verifier_for("bge-small-en-v1.5+multilingual-e5-small", 0.01)
    assert v is not None
    decision = v.check(asked, stored, 0.95)
    assert (decision.allowed, decision.reason) == (False, reason)


@pytest.fixture(scope="module")
async def embedder():
    e = LocalEmbedder(timeout_seconds=60)
    await e.start()
    yield e
    await e.close()


@pytest.mark.parametrize(("stored", "asked", "served"), [
    ("How do I reset my password?", "How can I reset my password?", True),
    ("flights from Paris to Rome", "flights from Rome to Paris", False),
    ("How do I enable 2FA on my account?", "How do I disable 2FA on my account?", False),
    ("我的银行卡还没有收到", "我的银行卡还没有收到。", True),
    ("从北京到上海的火车票", "从上海到北京的火车票", False),
    ("如何修改密码", "如何注销账户", False),
])
async def test_real_pairs(embedder, stored: str, asked: str, served: bool) -> None:
    v = verifier_for(embedder.name, 0.01)
    assert v is not None
    vectors = await embedder.embed([stored, asked])
    decision = v.check(asked, stored, float(vectors[0] @ vectors[1]))
    assert decision.allowed is served, decision


def test_only_questions_the_semantic_layer_reads_whole_are_verified() -> None:
    short = "Who pays the rent under this lease?"
    assert verifier.fully_read(short)
    assert not verifier.fully_read("word " * 97)  # more tokens than the features read
    assert not verifier.fully_read("x" * (verifier.MAX_QUESTION_CHARS + 1))  # more than the embedder reads
    assert not verifier.fully_read("租金" * 49)  # 98 Han characters: 98 tokens
    v = verifier_for("bge-small-en-v1.5+multilingual-e5-small", 0.01)
    assert v is not None
    document = "Clause: the tenant pays the rent on the first day of each month. " * 40
    for asked, stored in ((document + "Who pays?", document + "Who pays?!"), (short, document), (document, short)):
        assert v.check(asked, stored, 0.9999) == verifier.Decision(False, "long")
        assert verifier.check_unverified(asked, stored) == verifier.Decision(False, "long")
