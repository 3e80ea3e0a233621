"""Exact keys cover everything that changes an answer; per-request controls are validated."""

from __future__ import annotations

import pytest

from strata_runtime.cache.keys import merge_cache_control_header, namespace, pop_controls, request_keys
from strata_runtime.errors import ValidationFailed
from strata_runtime.gateway.contract import CallContext

BASE = {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}
NS = namespace(CallContext(tenant="a"), "tenant")


@pytest.mark.parametrize("extra", [
    {"temperature": 0.5}, {"top_p": 0.1}, {"max_tokens": 5}, {"tools": [{"type": "function"}]},
    {"tool_choice": "required"}, {"response_format": {"type": "json_object"}}, {"seed": 1}, {"stop": ["x"]},
    {"n": 2}, {"logit_bias": {"1": 5}}, {"presence_penalty": 1}, {"frequency_penalty": 1},
    {"parallel_tool_calls": False}, {"some_future_parameter": 1},
])
def test_every_answer_changing_parameter_changes_the_exact_key(extra: dict):
    assert request_keys({**BASE, **extra}, NS).exact != request_keys(BASE, NS).exact


def test_delivery_fields_do_not_change_the_key():
    same = {**BASE, "stream": True, "stream_options": {"include_usage": True}, "user": "u", "metadata": {"a": 1}}
    assert request_keys(same, NS).exact == request_keys(BASE, NS).exact


def test_tenants_and_users_get_different_namespaces():
    a, b = namespace(CallContext(tenant="a"), "tenant"), namespace(CallContext(tenant="b"), "tenant")
    assert request_keys(BASE, a).exact != request_keys(BASE, b).exact
    u1 = namespace(CallContext(tenant="a", user="u1"), "user")
    u2 = namespace(CallContext(tenant="a", user="u2"), "user")
    assert request_keys(BASE, u1).exact != request_keys(BASE, u2).exact
    # no end user named: the tenant is the only identity, so the call uses the tenant's namespace
    assert namespace(CallContext(tenant="a"), "user") == a


def test_the_default_scope_keeps_end_users_apart_unless_the_policy_says_tenant():
    from strata_runtime.config import CachePolicySpec

    default = CachePolicySpec().scope
    one, two = CallContext(tenant="a", user="u1"), CallContext(tenant="a", user="u2")
    assert request_keys(BASE, namespace(one, default)).exact != request_keys(BASE, namespace(two, default)).exact
    shared = CachePolicySpec.model_validate({"scope": "tenant"}).scope
    assert request_keys(BASE, namespace(one, shared)).exact == request_keys(BASE, namespace(two, shared)).exact


def test_fingerprint_ignores_only_the_last_user_message():
    other_question = {**BASE, "messages": [BASE["messages"][0], {"role": "user", "content": "bye"}]}
    other_system = {**BASE, "messages": [{"role": "system", "content": "t"}, BASE["messages"][1]]}
    assert request_keys(BASE, NS).fingerprint == request_keys(other_question, NS).fingerprint
    assert request_keys(BASE, NS).fingerprint != request_keys(other_system, NS).fingerprint


def test_cache_field_is_removed_and_parsed():
    body = {**BASE, "cache": {"no-store": True, "ttl": 30}}
    controls = pop_controls(body)
    assert "cache" not in body
    assert controls.no_store and controls.ttl_seconds == 30 and not controls.no_cache


@pytest.mark.parametrize(("cache", "field"), [
    ("yes", "cache"), ({"ttl": -1}, "cache.ttl"), ({"ttl": "5"}, "cache.ttl"), ({"no-cache": 1}, "cache.no-cache"),
    ({"forever": True}, "cache.forever"),
])
def test_bad_cache_controls_are_a_clear_validation_error(cache: object, field: str):
    with pytest.raises(ValidationFailed) as info:
        pop_controls({**BASE, "cache": cache})
    assert info.value.field == field


def test_cache_control_header_is_folded_in_and_only_tightens():
    body = {**BASE, "cache": {"ttl": 100}}
    merge_cache_control_header(body, "no-store, max-age=10")
    assert body["cache"] == {"ttl": 10, "no-store": True}
