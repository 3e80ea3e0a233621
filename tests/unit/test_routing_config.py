"""RoutingPolicy and skill config: bad input named by field, and the operator's rendering carrying a
policy's thresholds into the runtime's router (the CRD round trip without the cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from strata_operator.models import AgentDeploymentSpec
from strata_operator.reconcile import Inputs, Owner, render_runtime_config
from strata_runtime.config.agents import AgentConfig
from strata_runtime.config.policies import RoutingPolicySpec
from strata_runtime.routing.router import Router

pytestmark = pytest.mark.unit


def error_of(model: Any, data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return str(info.value)


def test_low_above_high_is_rejected_for_the_policy_and_for_a_skill() -> None:
    assert "semantic.low must not exceed semantic.high" in error_of(
        RoutingPolicySpec, {"semantic": {"low": 0.9, "high": 0.5}})
    assert "semantic.skills[refund].low must not exceed its high" in error_of(
        RoutingPolicySpec, {"semantic": {"skills": [{"name": "refund", "low": 0.9, "high": 0.5}]}})
    assert "lists a skill twice" in error_of(RoutingPolicySpec, {"semantic": {"skills": [
        {"name": "a", "low": 0.1, "high": 0.2}, {"name": "a", "low": 0.1, "high": 0.2}]}})


def test_duplicate_skill_names_and_bad_heuristic_patterns_are_rejected() -> None:
    assert "duplicate skill name 'x'" in error_of(AgentConfig, {"id": "a", "tenant": "t", "model": "m",
                                                                "skills": [{"name": "x"}, {"name": "x"}]})
    assert "invalid pattern" in error_of(RoutingPolicySpec, {"heuristic": {"features": [
        {"name": "q", "pattern": "(", "weight": 0.1}]}})


def test_a_skill_with_examples_and_no_other_text_is_valid() -> None:
    agent = AgentConfig.model_validate({"id": "a", "tenant": "t", "model": "m",
                                        "skills": [{"name": "x", "examples": ["hello there"]}, {"name": "bare"}]})
    assert agent.skills[0].examples == ["hello there"] and agent.skills[1].examples == []


def test_the_operator_renders_a_policy_whose_thresholds_the_router_uses() -> None:
    spec = AgentDeploymentSpec.model_validate({
        "image": "strata-runtime:test", "runtime": {
            "models": [{"name": "m", "provider": "demo"}],
            "agents": [{"id": "support", "tenant": "acme", "model": "m", "skills": [{"name": "refund"}]}]}})
    owner = Owner(name="support", namespace="ns", uid="u")

    def router_for(policy: dict[str, Any]) -> Router:
        config = render_runtime_config(Inputs(owner=owner, spec=spec, api_key_tenants=("acme",),
                                              routing_policy=RoutingPolicySpec.model_validate(policy)))
        return Router(config.routing, None, lambda: None)

    before = router_for({"semantic": {"low": 0.5, "high": 0.8}})
    after = router_for({"semantic": {"low": 0.5, "high": 0.8, "skills": [{"name": "refund", "low": 0.3, "high": 0.6}]}})
    assert before.thresholds("refund") == {"low": 0.5, "high": 0.8}
    assert after.thresholds("refund") == {"low": 0.3, "high": 0.6}
    assert after.policy_hash != before.policy_hash  # a new policy never reuses the old classifier answers
