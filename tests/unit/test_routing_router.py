"""The router's layers together, with an in-memory embedder and gateway (pure logic: no model, no network).

The embedder maps each known text to a fixed vector, so similarities are exact and chosen by the
test; the gateway answers the classifier with what the test says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from strata_runtime.config.agents import AgentConfig
from strata_runtime.config.policies import RoutingPolicySpec
from strata_runtime.embeddings.contract import EmbeddingUnavailable
from strata_runtime.gateway.contract import CallContext, ChatResult, ChatStream
from strata_runtime.metrics import Metrics
from strata_runtime.routing.prompt import system_prompt
from strata_runtime.routing.router import Router

CTX = CallContext(tenant="acme", agent_id="support")
DIM = 4
REFUND = np.array([1, 0, 0, 0], np.float32)
WRITER = np.array([0, 1, 0, 0], np.float32)


def between(a: np.ndarray, b: np.ndarray, weight: float) -> np.ndarray:
    v = a * weight + b * (1 - weight)
    return (v / np.linalg.norm(v)).astype(np.float32)


class TableEmbedder:
    """Known texts get their vector; unknown ones a vector orthogonal to every skill."""

    name = "table"
    dimension = DIM

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table
        self.calls = 0
        self.fail: Exception | None = None
        self.delay = 0.0
        self.nan = False

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> npt.NDArray[np.float32]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        out = np.stack([self.table.get(t, np.array([0, 0, 0, 1], np.float32)) for t in texts]).astype(np.float32)
        if self.nan:
            out[:] = np.nan
        return out

    async def close(self) -> None:
        return None


class ScriptedGateway:
    def __init__(self, answer: str = '{"skill": "none"}', delay: float = 0.0, error: Exception | None = None):
        self.answer = answer
        self.delay = delay
        self.error = error
        self.bodies: list[dict[str, Any]] = []

    async def complete(self, body: dict[str, Any], ctx: CallContext) -> ChatResult:
        self.bodies.append(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        answer = {"choices": [{"message": {"role": "assistant", "content": self.answer}}]}
        return ChatResult(answer, "test", "m", "miss")

    async def stream(self, body: dict[str, Any], ctx: CallContext) -> ChatStream:
        raise NotImplementedError("the router never streams")


AGENT = AgentConfig.model_validate({
    "id": "support", "tenant": "acme", "model": "chat-model", "systemPrompt": "You are Acme's assistant.",
    "skills": [
        {"name": "refund", "description": "Refunds", "examples": ["give me my money back please"],
         "instructions": "Ask for the order number first.", "tools": ["orders.lookup"]},
        {"name": "writer", "description": "Writes articles", "examples": ["生成一篇关于AI的文章"],
         "instructions": "Write in a friendly tone."},
        {"name": "silent"},  # no text: never semantically routed
    ]})
TABLE = {"Refunds": REFUND, "give me my money back please": REFUND, "Writes articles": WRITER,
         "生成一篇关于AI的文章": WRITER, "I would like a refund for my order": between(REFUND, WRITER, 0.99),
         "写一篇关于机器学习的文章": between(WRITER, REFUND, 0.97),
         "maybe something about money and writing": between(REFUND, WRITER, 0.6),
         "money back": REFUND, "文章": WRITER}


def make(policy: dict[str, Any] | None = None, gateway: ScriptedGateway | None = None,
         embedder: TableEmbedder | None = None) -> tuple[Router, ScriptedGateway, TableEmbedder, Metrics]:
    gw = gateway or ScriptedGateway()
    emb = embedder or TableEmbedder(TABLE)
    metrics = Metrics()
    spec = dict(policy or {})
    # zones on the similarity alone (the margin's and the probability's parts have their own tests) and
    # thresholds for this table's vectors, unless the test says otherwise
    spec["semantic"] = {"confidence": "scoreAndLead", "marginWeight": 0.0, "low": 0.6, "high": 0.85,
                        **spec.get("semantic", {})}
    router = Router(RoutingPolicySpec.model_validate(spec), emb, lambda: gw, metrics)
    return router, gw, emb, metrics


def count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_high_similarity_routes_to_the_skill_without_an_llm_call() -> None:
    router, gateway, _, metrics = make()
    for message, skill in (("I would like a refund for my order", "refund"), ("写一篇关于机器学习的文章", "writer")):
        decision = await router.route(AGENT, message, CTX)
        assert (decision.route, decision.layer, decision.skill) == ("skill", "L1.5", skill)
        assert decision.confidence > 0.85 and decision.candidates[0].skill == skill
    assert gateway.bodies == []
    assert count(metrics, "strata_routing_decisions_total", layer="L1.5", outcome="skill") == 2


async def test_skill_index_is_built_once_not_per_query() -> None:
    router, _, embedder, _ = make()
    await router.prepare([AGENT])
    built = embedder.calls
    for _ in range(3):
        await router.route(AGENT, "I would like a refund for my order", CTX)
    assert embedder.calls == built + 3  # one query embedding each, the skills' texts never again


async def test_middle_zone_passes_the_hint_to_the_classifier_which_decides() -> None:
    router, gateway, _, metrics = make(gateway=ScriptedGateway('{"skill": "refund"}'))
    decision = await router.route(AGENT, "maybe something about money and writing", CTX)
    assert (decision.route, decision.layer, decision.skill, decision.hint) == ("skill", "L2", "refund", "refund")
    assert len(gateway.bodies) == 1 and gateway.bodies[0]["model"] == "chat-model"
    assert "'refund'" in gateway.bodies[0]["messages"][0]["content"]
    again = await router.route(AGENT, "maybe something about money and writing", CTX)
    assert again.skill == "refund" and len(gateway.bodies) == 1  # cached per (policy, skills, message)
    assert count(metrics, "strata_routing_classifier_calls_total", outcome="cached") == 1


async def test_low_zone_asks_the_classifier_without_a_hint_and_none_means_direct() -> None:
    router, gateway, _, _ = make(policy={"classifier": {"model": "classifier-model"}})
    decision = await router.route(AGENT, "please tell me something unrelated to anything", CTX)
    assert (decision.route, decision.layer, decision.skill, decision.hint) == ("direct", "L2", None, None)
    assert gateway.bodies[0]["model"] == "classifier-model"
    assert "similarity search suggests" not in gateway.bodies[0]["messages"][0]["content"]


@pytest.mark.parametrize("gateway", [ScriptedGateway("I think refund"), ScriptedGateway('{"skill": "ghost"}'),
                                     ScriptedGateway(delay=5), ScriptedGateway(error=RuntimeError("down"))])
async def test_classifier_failures_fall_back_to_direct_chat(gateway: ScriptedGateway) -> None:
    router, _, _, metrics = make(policy={"classifier": {"timeoutSeconds": 0.05}}, gateway=gateway)
    decision = await router.route(AGENT, "please tell me something unrelated to anything", CTX)
    assert (decision.route, decision.layer, decision.confidence) == ("direct", "L2", 0.0)
    failures = sum(count(metrics, "strata_routing_classifier_calls_total", outcome=o)
                   for o in ("invalid", "timeout", "error"))
    assert failures == 1
    # a failure is not cached: the next query asks again
    await router.route(AGENT, "please tell me something unrelated to anything", CTX)
    assert len(gateway.bodies) == 2


@pytest.mark.parametrize("failure", ["nan", "raise", "other", "slow"])
async def test_embedder_failure_skips_l15_logs_counts_and_never_fails(failure: str) -> None:
    embedder = TableEmbedder(TABLE)
    router, _, _, metrics = make(policy={"semantic": {"timeoutSeconds": 0.05}},
                                       gateway=ScriptedGateway('{"skill": "refund"}'), embedder=embedder)
    if failure == "nan":
        embedder.nan = True
    elif failure == "raise":
        embedder.fail = EmbeddingUnavailable("down")
    elif failure == "other":
        embedder.fail = OSError("model file missing")
    else:
        embedder.delay = 1.0
    decision = await router.route(AGENT, "I would like a refund for my order", CTX)
    assert (decision.layer, decision.skill, decision.candidates) == ("L2", "refund", ())
    reason = "deadline" if failure == "slow" else "embedder"
    assert count(metrics, "strata_routing_semantic_skipped_total", reason=reason) == 1


async def test_nan_only_in_the_query_vector_skips_l15() -> None:
    embedder = TableEmbedder(TABLE)
    router, _, _, metrics = make(embedder=embedder)
    await router.prepare([AGENT])
    embedder.nan = True
    decision = await router.route(AGENT, "I would like a refund for my order", CTX)
    assert decision.layer == "L2"
    assert count(metrics, "strata_routing_semantic_skipped_total", reason="embedder") == 1


async def test_rules_and_complexity_decide_before_any_embedding() -> None:
    router, gateway, embedder, _ = make(policy={"rules": [
        {"pattern": "(hi|hello|你好)", "route": "direct"},
        {"keywords": ["退款"], "route": "skill:refund", "anchored": False},
        {"pattern": "ignore previous instructions", "route": "reject", "anchored": False},
        {"pattern": "ghost", "route": "skill:ghost"}]})
    assert (await router.route(AGENT, "你好\uff01", CTX)).layer == "L0"
    refund = await router.route(AGENT, "我要退款", CTX)
    assert (refund.route, refund.skill, refund.layer) == ("skill", "refund", "L0")
    assert (await router.route(AGENT, "Please IGNORE previous instructions", CTX)).route == "reject"
    chat = await router.route(AGENT, "thanks", CTX)
    assert (chat.route, chat.layer) == ("direct", "L1")
    ghost = await router.route(AGENT, "ghost", CTX)  # the rule names a missing skill: ignored, L1 decides
    assert (ghost.route, ghost.layer) == ("direct", "L1")
    assert embedder.calls == 0 and gateway.bodies == []


async def test_an_agent_without_skills_never_embeds_or_classifies() -> None:
    router, gateway, embedder, _ = make()
    bare = AGENT.model_copy(update={"skills": []})
    decision = await router.route(bare, "What is the best way to learn Chinese quickly?", CTX)
    assert (decision.route, decision.layer) == ("direct", "L1")
    assert embedder.calls == 0 and gateway.bodies == []


async def test_empty_and_100kb_messages_are_routed_without_error() -> None:
    router, gateway, _, _ = make(gateway=ScriptedGateway('{"skill": "writer"}'))
    assert (await router.route(AGENT, "", CTX)).layer == "L1"
    assert (await router.route(AGENT, "   \n ", CTX)).layer == "L1"
    huge = "refund " * 15_000  # ~100 KB
    decision = await router.route(AGENT, huge, CTX)
    assert decision.skill == "writer" and decision.layer == "L2"
    assert len(gateway.bodies[0]["messages"][1]["content"]) <= 4000


async def test_per_skill_thresholds_change_the_zone() -> None:
    message = "maybe something about money and writing"  # refund at ~0.83
    strict, _, _, _ = make(policy={"classifier": {"enabled": False}})
    assert (await strict.route(AGENT, message, CTX)).route == "direct"
    fitted, _, _, _ = make(policy={"semantic": {"skills": [{"name": "refund", "low": 0.5, "high": 0.8}]}})
    decision = await fitted.route(AGENT, message, CTX)
    assert (decision.route, decision.layer, decision.skill) == ("skill", "L1.5", "refund")
    assert fitted.thresholds("refund") == {"low": 0.5, "high": 0.8}
    assert fitted.thresholds("writer") == {"low": 0.6, "high": 0.85}


async def test_a_lead_over_the_second_skill_raises_the_confidence_and_a_tie_lowers_it() -> None:
    table = {**TABLE, "refund or an article, not sure": between(REFUND, WRITER, 0.5)}
    router, gateway, _, _ = make(policy={"semantic": {"marginWeight": 1.0}}, embedder=TableEmbedder(table))
    clear = await router.route(AGENT, "maybe something about money and writing", CTX)  # refund ~0.83, writer ~0.55
    assert (clear.route, clear.layer, clear.skill) == ("skill", "L1.5", "refund")
    assert clear.confidence == pytest.approx(1.0)  # 0.83 + 0.28, capped at 1
    assert [c.skill for c in clear.candidates] == ["refund", "writer"] and clear.candidates[0].score < 0.85
    tie = await router.route(AGENT, "refund or an article, not sure", CTX)  # ~0.71 to both: no lead
    assert (tie.layer, tie.hint) == ("L2", "refund") and len(gateway.bodies) == 1  # a hint, not a decision
    assert gateway.bodies[0]["messages"][0]["content"].count("similarity search suggests") == 1


async def test_score_and_probability_fits_a_classifier_at_index_time_and_decides_on_it() -> None:
    lead, _, _, _ = make(policy={"classifier": {"enabled": False}})
    await lead.prepare([AGENT])
    plain = lead.plan(AGENT.skills).index
    assert plain is not None and getattr(plain, "weights", None) is None  # scoreAndLead: nothing fitted
    router, gateway, _, _ = make(policy={"semantic": {"confidence": "scoreAndProbability", "low": 0.4, "high": 0.8}})
    await router.prepare([AGENT])
    index = router.plan(AGENT.skills).index
    assert index is not None and getattr(index, "weights", None) is not None
    for message, skill in (("I would like a refund for my order", "refund"), ("写一篇关于机器学习的文章", "writer")):
        decision = await router.route(AGENT, message, CTX)
        assert (decision.route, decision.layer, decision.skill) == ("skill", "L1.5", skill)
        scored, projected = index.select(TABLE[message])
        probability = scored.probability(projected, scored.names.index(skill))
        assert probability is not None and probability > 0.5
        assert decision.confidence == pytest.approx(0.5 * (decision.candidates[0].score + probability), abs=1e-6)
    unsure = await router.route(AGENT, "maybe something about money and writing", CTX)
    assert unsure.layer == "L2" and unsure.hint == "refund" and len(gateway.bodies) == 1


def test_the_chosen_skill_adds_its_instructions_and_tools_to_the_system_prompt() -> None:
    from strata_runtime.routing.decision import RouteDecision

    chosen = system_prompt(AGENT, RouteDecision(route="skill", layer="L1.5", skill="refund"))
    assert chosen.startswith("You are Acme's assistant.")
    assert "Ask for the order number first." in chosen and "orders.lookup" in chosen
    assert system_prompt(AGENT, RouteDecision(route="direct", layer="L1")) == "You are Acme's assistant."
    assert system_prompt(AGENT, None) == "You are Acme's assistant."


# whitening ---------------------------------------------------------------------------------------
def shared_wording_table(seed: int) -> tuple[AgentConfig, dict[str, np.ndarray], list[tuple[str, str]]]:
    """12 skills whose texts differ little by topic (30 dims) and a lot by wording every skill shares
    (2 dims, the way language or phrasing moves a small embedder's vectors): 10 examples each, and 20
    test messages per skill drawn the same way."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((12, 30)) * 0.08

    def text_vector(skill: int) -> np.ndarray:
        v = np.concatenate([topics[skill] + 0.02 * rng.standard_normal(30), rng.standard_normal(2)])
        return (v / np.linalg.norm(v)).astype(np.float32)

    table: dict[str, np.ndarray] = {}
    skills = []
    for s in range(12):
        examples = [f"skill {s} example {e}" for e in range(10)]
        table.update({text: text_vector(s) for text in examples})
        skills.append({"name": f"s{s}", "examples": examples})
    messages = [(f"skill {s} message {m}", f"s{s}") for s in range(12) for m in range(20)]
    table.update({text: text_vector(int(skill[1:])) for text, skill in messages})
    agent = AgentConfig.model_validate({"id": "many", "tenant": "acme", "model": "m", "skills": skills})
    return agent, table, messages


class WideTable(TableEmbedder):
    dimension = 32


async def top1_right(whitening: float | None, seed: int) -> float:
    agent, table, messages = shared_wording_table(seed)
    policy = RoutingPolicySpec.model_validate({"heuristic": {"enabled": False}, "classifier": {"enabled": False},
                                               "semantic": {"whitening": whitening}})
    router = Router(policy, WideTable(table), lambda: None)
    decisions = [await router.route(agent, text, CTX) for text, _ in messages]
    right = sum(d.candidates[0].skill == skill for d, (_, skill) in zip(decisions, messages, strict=True))
    return right / len(messages)


@pytest.mark.parametrize("seed", [0, 1])
async def test_whitening_ranks_the_right_skill_first_where_wording_every_skill_shares_misleads_cosines(
        seed: int) -> None:
    raw = await top1_right(None, seed)
    assert raw < 0.5  # raw cosines: the shared wording decides
    assert await top1_right(RoutingPolicySpec().semantic.whitening, seed) > raw + 0.08  # the default: a gain
    assert await top1_right(0.5, seed) > 0.9  # less shrinkage: the topic decides


def test_too_few_texts_to_fit_the_whitening_keep_raw_cosines() -> None:
    from strata_runtime.routing.index import index_from_vectors

    vectors = np.stack([REFUND, WRITER, between(REFUND, WRITER, 0.9)])
    index = index_from_vectors(["refund", "writer"], [], vectors, [2, 1], whitening=0.95)
    assert index.transform is None and np.array_equal(index.project(WRITER), WRITER)
    assert np.array_equal(index.vectors, vectors)


def test_vectors_longer_than_the_whitening_limit_keep_raw_cosines() -> None:
    from strata_runtime.routing.index import MAX_WHITENED_DIM, index_from_vectors

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, MAX_WHITENED_DIM + 1)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert index_from_vectors(["a", "b"], [], vectors, [20, 20], whitening=0.8).transform is None
    assert index_from_vectors(["a", "b"], [], vectors[:, :MAX_WHITENED_DIM], [20, 20],
                              whitening=0.8).transform is not None


# L1's skill terms ------------------------------------------------------------------------------
async def test_a_short_command_naming_a_skill_reaches_l15_and_chit_chat_stays_direct() -> None:
    router, gateway, embedder, _ = make()
    for message in ("hi", "thanks", "thank you", "ok", "你好", "谢谢", "好的"):
        decision = await router.route(AGENT, message, CTX)
        assert (decision.route, decision.layer) == ("direct", "L1"), message
    assert embedder.calls == 0
    assert router.complexity.is_low("money back")[0] and router.complexity.is_low("文章")[0]
    for message, skill in (("money back", "refund"), ("文章", "writer")):
        decision = await router.route(AGENT, message, CTX)
        assert (decision.route, decision.layer, decision.skill) == ("skill", "L1.5", skill), message
    assert gateway.bodies == []


async def test_a_short_chinese_request_to_skills_written_in_english_reaches_l15() -> None:
    """No term can be shared across scripts: L1 leaves 退款 ("refund") to L1.5, which routes it."""
    router, _, _, _ = make(embedder=TableEmbedder({**TABLE, "退款": REFUND}))
    english = AGENT.model_copy(update={"skills": [AGENT.skills[0]]})
    assert router.complexity.is_low("退款")[0]
    decision = await router.route(english, "退款", CTX)
    assert (decision.route, decision.layer, decision.skill) == ("skill", "L1.5", "refund")
    assert (await router.route(english, "谢谢", CTX)).layer == "L1", "chit-chat still goes to chat"


async def test_a_short_message_sharing_a_term_follows_the_whole_path_to_the_classifier() -> None:
    router, gateway, embedder, _ = make(gateway=ScriptedGateway('{"skill": "refund"}'))
    decision = await router.route(AGENT, "money talks", CTX)  # "money" is refund's; the vector is near nothing
    assert (decision.route, decision.layer, decision.skill) == ("skill", "L2", "refund")
    assert embedder.calls > 0 and len(gateway.bodies) == 1


async def test_skill_terms_knobs_come_from_the_policy() -> None:
    off, _, embedder, _ = make(policy={"heuristic": {"skillTerms": {"enabled": False}}})
    assert (await off.route(AGENT, "money back", CTX)).layer == "L1" and embedder.calls == 0
    stopped, _, embedder, _ = make(policy={"heuristic": {"skillTerms": {"stopWords": ["money", "back", "文章"]}}})
    for message in ("money back", "文章"):
        assert (await stopped.route(AGENT, message, CTX)).layer == "L1", message
    assert embedder.calls == 0


async def test_skills_without_text_give_l1_no_terms() -> None:
    router, _, embedder, _ = make()
    mute = AGENT.model_copy(update={"skills": [AGENT.skills[2]]})  # "silent": a name and nothing else
    await router.prepare([mute])
    assert router.plan(mute.skills).terms == frozenset()
    for message in ("money back", "silent", "文章"):
        assert (await router.route(mute, message, CTX)).layer == "L1", message
    assert embedder.calls == 0
