"""`routing fit`: thresholds fitted from labelled messages, and the command that writes them into a policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from strata_runtime.config.policies import RoutingPolicySpec
from strata_runtime.routing.calibrate import Scored, fit, min_lines, report
from strata_runtime.routing.cli import main as routing_main

pytestmark = pytest.mark.unit


def test_high_is_where_the_target_precision_holds_and_low_keeps_most_right_answers() -> None:
    right = [Scored("a", 0.80 + i * 0.01, "a") for i in range(15)]  # 0.80 .. 0.94, all right
    wrong = [Scored("a", 0.70 + i * 0.01, "b") for i in range(6)] * 2  # 0.70 .. 0.75, two wrong at each
    oos = [Scored("a", 0.72, None), Scored("b", 0.5, None)]
    fitted = fit(right + wrong + oos, target=0.97)
    assert 0.75 <= fitted.high < 0.80
    assert fitted.low <= fitted.high
    result = report(right + wrong + oos, fitted)
    assert result.accuracy == 1.0 and result.coverage == pytest.approx(15 / 29)
    assert result.oos_high == 0.0


def test_one_error_among_fewer_lines_than_the_target_can_tell_is_tolerated_two_are_not() -> None:
    right = [Scored("a", 0.80 + i * 0.01, "a") for i in range(15)]
    one_wrong = right + [Scored("a", 0.75, "b")] + [Scored("a", 0.60 + i * 0.001, "b") for i in range(20)]
    assert min_lines(0.97) == 34 and min_lines(0.98) == 50 and min_lines(0.9) == 10
    # 16 lines above 0.7475 with one error: fewer than 34, within 0.97's tolerance
    assert 0.60 < fit(one_wrong, target=0.97).high <= 0.7475
    two_wrong = [*one_wrong, Scored("a", 0.755, "b")]  # two errors above 0.7475: high passes one at most
    assert 0.75 <= fit(two_wrong, target=0.97).high < 0.80


def test_a_few_wrong_lines_among_the_most_confident_do_not_push_high_to_one() -> None:
    """One miss among the top ~30 lines used to push high above every line (precision 29/30 < 0.97)."""
    items = [Scored(f"s{i % 10}", 0.50 + i * 0.0025, f"s{i % 10}") for i in range(200)]  # 0.50 .. 0.9975
    items[-5] = Scored(items[-5].top, items[-5].score, "other")  # a miss among the top 5
    items += [Scored(f"s{i % 10}", 0.30 + i * 0.002, None) for i in range(50)]  # out of scope, < 0.40
    fitted = fit(items, target=0.97)
    assert fitted.high < 0.45
    assert fitted.skills["s0"][1] < 0.45  # the skills without the miss keep a low threshold too
    assert sum(1 for _, high in fitted.skills.values() if high < 0.45) >= 9
    result = report(items, fitted)
    assert result.accuracy >= 0.97 and result.coverage > 0.7


def test_a_skill_with_few_lines_falls_back_to_the_global_threshold() -> None:
    many = [Scored("a", 0.60 + i * 0.002, "a") for i in range(150)]  # 0.60 .. 0.898, right
    many += [Scored("a", 0.40 + i * 0.004, None) for i in range(50)]  # out of scope below 0.60
    few = [Scored("b", 0.50, "b"), Scored("b", 0.70, "b")]
    fitted = fit(many + few, target=0.97)
    assert fitted.skills["b"][1] == pytest.approx(fitted.high, abs=0.03)
    noisy = [Scored("b", 0.85, "c"), Scored("b", 0.86, "c"), Scored("b", 0.70, "b")]
    assert fit(many + noisy, target=0.97).skills["b"][1] >= 0.85  # its own two misses count (one passes at most)


def test_a_lone_miss_at_the_very_top_does_not_push_high_to_one() -> None:
    items = [Scored("a", 0.99, "b")] + [Scored("a", 0.80 + i * 0.005, "a") for i in range(30)]
    items += [Scored("a", 0.60 + i * 0.01, None) for i in range(10)]
    assert fit(items, target=0.9).high < 0.85


def test_a_skill_with_many_labelled_misses_gets_its_own_higher_threshold() -> None:
    good = [Scored("a", 0.70 + i * 0.002, "a") for i in range(100)]  # 0.70 .. 0.90, always right
    noisy = [Scored("b", 0.70 + i * 0.002, "b" if i >= 50 or i % 3 else "a") for i in range(100)]  # misses < 0.80
    fitted = fit(good + noisy, target=0.97)
    assert fitted.skills["b"][1] > fitted.skills["a"][1] + 0.05
    assert all(low <= high for low, high in fitted.skills.values())


def test_nothing_scored_is_refused() -> None:
    with pytest.raises(ValueError, match="no labelled message"):
        fit([Scored(None, 0.0, "a")])


def test_a_target_of_one_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        fit([Scored("a", 0.5, "a")], target=1.0)
    assert routing_main(["fit", "--policy", str(tmp_path / "p.yaml"), "--labelled", str(tmp_path / "l.jsonl"),
                         "--target", "1"]) != 0
    assert "--target is a precision between 0 and 1" in capsys.readouterr().err


def write_config(path: Path) -> None:
    path.write_text(yaml.safe_dump({
        "auth": {"mode": "none"}, "models": [{"name": "demo", "provider": "demo"}],
        "agents": [{"id": "bot", "tenant": "t", "model": "demo", "skills": [
            {"name": "weather", "description": "Weather forecasts",
             "examples": ["what is the weather tomorrow", "will it rain today", "明天天气怎么样"]},
            {"name": "writer", "description": "Writes articles",
             "examples": ["write an article about AI", "draft a blog post on cars", "生成一篇关于AI的文章"]},
        ]}],
        "routing": {"semantic": {"low": 0.6, "high": 0.85}},
    }, allow_unicode=True), encoding="utf-8")


def test_fit_writes_per_skill_thresholds_the_policy_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the runtime's default (bundled) embedder, Chinese and English lines."""
    config = tmp_path / "runtime.yaml"
    write_config(config)
    lines = [("is it going to snow this weekend", "weather"), ("后天会下雨吗", "weather"),
             ("compose a short essay about robots", "writer"), ("写一篇关于机器学习的文章", "writer"),
             ("play some jazz", None), ("给我讲个笑话", None)]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("\n".join(json.dumps({"text": t, "skill": s}, ensure_ascii=False) for t, s in lines),
                        encoding="utf-8")
    assert routing_main(["fit", "--policy", str(config), "--labelled", str(labelled)]) == 0
    out = capsys.readouterr().out
    assert "routed without an LLM call" in out and f"wrote {config}" in out
    written = yaml.safe_load(config.read_text(encoding="utf-8"))["routing"]
    policy = RoutingPolicySpec.model_validate(written)
    assert policy.semantic.low <= policy.semantic.high
    assert {t.name for t in policy.semantic.skills} <= {"weather", "writer"}


@pytest.mark.parametrize(("line", "error"), [
    ('{"text": "hello", "skill": "nope"}', "unknown skill 'nope'"),
    ('{"text": "", "skill": null}', "text must be a non-empty string"),
    ("not json", "not JSON"),
])
def test_bad_labelled_lines_are_named(tmp_path: Path, line: str, error: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "runtime.yaml"
    write_config(config)
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text(line + "\n", encoding="utf-8")
    before = config.read_text(encoding="utf-8")
    assert routing_main(["fit", "--policy", str(config), "--labelled", str(labelled)]) == 2
    assert f"{labelled}:1: {error}" in capsys.readouterr().err
    assert config.read_text(encoding="utf-8") == before


async def test_fit_scores_messages_as_the_router_does(tmp_path: Path) -> None:
    """The fitted thresholds apply to the confidence the router computes (here whitened: enough examples)."""
    from strata_runtime.config.agents import AgentConfig, SkillConfig
    from strata_runtime.config.runtime import EmbedderConfig
    from strata_runtime.embeddings.factory import build_embedder
    from strata_runtime.gateway.contract import CallContext
    from strata_runtime.routing.cli import score
    from strata_runtime.routing.router import Router

    skills = [SkillConfig(name="weather", description="Weather forecasts", examples=[
                  "what is the weather tomorrow", "will it rain today", "明天天气怎么样", "is it cold outside",
                  "北京会下雪吗", "do I need an umbrella"]),
              SkillConfig(name="writer", description="Writes articles", examples=[
                  "write an article about AI", "draft a blog post on cars", "生成一篇关于AI的文章",
                  "write a short story", "写一篇关于旅游的博客", "compose an essay on history"])]
    policy = RoutingPolicySpec.model_validate({"heuristic": {"enabled": False}, "classifier": {"enabled": False}})
    labelled: list[tuple[str, str | None]] = [("后天会下雨吗", "weather"), ("compose a poem about the sea", "writer"),
                                              ("play some jazz", None)]
    config = EmbedderConfig(timeout_seconds=60)
    scored = await score(skills, labelled, config, policy)
    embedder = build_embedder(config, {})
    await embedder.start()  # as the runtime does at start-up: loading the model is not the route's deadline
    try:
        router = Router(policy, embedder, lambda: None)
        agent = AgentConfig(id="bot", tenant="t", model="demo", skills=skills)
        for (text, _), item in zip(labelled, scored, strict=True):
            decision = await router.route(agent, text, CallContext(tenant="t", agent_id="bot"))
            assert decision.candidates[0].skill == item.top
            assert decision.confidence == pytest.approx(item.score, abs=1e-4)
    finally:
        await embedder.close()


async def test_a_labelled_line_that_is_also_an_example_is_scored_without_it(tmp_path: Path) -> None:
    """Scored against itself a skill's own example looks surer than any new message would: `routing fit`
    scores it against the skills without that example (out of fold), other lines against them all."""
    from strata_runtime.config.agents import AgentConfig, SkillConfig
    from strata_runtime.config.runtime import EmbedderConfig
    from strata_runtime.embeddings.factory import build_embedder
    from strata_runtime.gateway.contract import CallContext
    from strata_runtime.routing.cli import in_sample_folds, score
    from strata_runtime.routing.router import Router

    weather = ["what is the weather tomorrow", "will it rain today", "明天天气怎么样", "is it cold outside",
               "北京会下雪吗", "do I need an umbrella"]
    writer = ["write an article about AI", "draft a blog post on cars", "生成一篇关于AI的文章", "write a short story",
              "写一篇关于旅游的博客", "compose an essay on history"]
    skills = [SkillConfig(name="weather", description="Weather forecasts", examples=weather),
              SkillConfig(name="writer", description="Writes articles", examples=writer)]
    # confidence = the top score (no lead): two skills this far apart would both reach the cap of 1
    policy = RoutingPolicySpec.model_validate({"heuristic": {"enabled": False}, "classifier": {"enabled": False},
                                               "semantic": {"marginWeight": 0}})
    labelled: list[tuple[str, str | None]] = [(" will it rain today ", "weather"), ("后天会下雨吗", "weather"),
                                              ("will it rain today", None)]
    assert in_sample_folds(skills, labelled) == {0: 0}  # an out-of-scope line is nobody's example
    config = EmbedderConfig(timeout_seconds=60)
    scored = await score(skills, labelled, config, policy)
    embedder = build_embedder(config, {})
    await embedder.start()  # as the runtime does at start-up: loading the model is not the route's deadline
    ctx = CallContext(tenant="t", agent_id="bot")
    try:
        full = AgentConfig(id="bot", tenant="t", model="demo", skills=skills)
        without = AgentConfig(id="bot", tenant="t", model="demo", skills=[
            skills[0].model_copy(update={"examples": [e for e in weather if e != "will it rain today"]}), skills[1]])
        in_sample = await Router(policy, embedder, lambda: None).route(full, "will it rain today", ctx)
        out_of_fold = await Router(policy, embedder, lambda: None).route(without, "will it rain today", ctx)
        assert scored[0].score == pytest.approx(out_of_fold.confidence, abs=1e-4)
        assert in_sample.confidence > out_of_fold.confidence + 0.05
        for (text, _), item in list(zip(labelled, scored, strict=True))[1:]:
            decision = await Router(policy, embedder, lambda: None).route(full, text, ctx)
            assert item.score == pytest.approx(decision.confidence, abs=1e-4)
    finally:
        await embedder.close()
