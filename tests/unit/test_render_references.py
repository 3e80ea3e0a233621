"""The indexes' view of what an AgentDeployment references, and the operator's CLI settings."""

from __future__ import annotations

import pytest

from strata_operator.cli import parse_settings
from strata_operator.handlers import references as _references

pytestmark = pytest.mark.unit


def test_references_list_policies_and_every_secret() -> None:
    spec = {
        "cachePolicyRef": {"name": "default"},
        "routingPolicyRef": {"name": "fast"},
        "apiKeysSecretRef": {"name": "keys"},
        "stores": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
                   "milvus": {"uriSecretRef": {"name": "milvus", "key": "uri"},
                              "tokenSecretRef": {"name": "milvus-token", "key": "t"}}},
        "secretEnv": [{"name": "OPENAI_API_KEY", "secretKeyRef": {"name": "openai", "key": "k"}}],
    }
    assert set(_references(spec)) == {
        ("CachePolicy", "default"), ("RoutingPolicy", "fast"), ("Secret", "keys"), ("Secret", "redis"),
        ("Secret", "milvus"), ("Secret", "milvus-token"), ("Secret", "openai")}


def test_references_survive_a_malformed_spec() -> None:
    assert _references({"cachePolicyRef": "oops", "stores": [], "secretEnv": [1]}) == []


def test_watch_namespaces_come_from_the_environment_and_priorities_differ_per_pod() -> None:
    a = parse_settings([], {"STRATA_WATCH_NAMESPACES": "a, b", "POD_NAME": "op-1"})
    b = parse_settings([], {"POD_NAME": "op-2"})
    assert a.namespaces == ("a", "b") and b.namespaces == ()
    assert a.priority != b.priority
    assert parse_settings(["--priority", "7"], {}).priority == 7
