"""The generated schemas are structural: what Kubernetes accepts."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from pydantic import BaseModel

from strata_operator.crdgen import CEL_RULES, LIST_MAP_KEYS, NOT_IN_CEL, all_crds
from strata_operator.models import AgentDeploymentSpec, CachePolicySpec, RoutingPolicySpec

pytestmark = pytest.mark.unit


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += walk(value, f"{path}.{key}")
        if "items" in node:
            found += walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


def schema_of(file: str) -> dict[str, Any]:
    return all_crds()[file]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("file", sorted(all_crds()))
def test_every_schema_node_is_structural(file: str) -> None:
    for path, node in walk(schema_of(file)):
        assert "type" in node, f"{file}{path} has no type"
        assert "$ref" not in node and "anyOf" not in node and "oneOf" not in node, f"{file}{path}"
        assert not ("properties" in node and "additionalProperties" in node), f"{file}{path}"
        assert node.get("additionalProperties") is not False, f"{file}{path}"
        assert "title" not in node, f"{file}{path}"
        assert node.get("default", 0) is not None, f"{file}{path} defaults to null"


def test_agent_deployment_spec_uses_the_spec_field_names() -> None:
    spec = schema_of("agentdeployments.strata.dev.yaml")["properties"]["spec"]["properties"]
    assert {"image", "replicas", "resources", "runtime", "stores", "apiKeysSecretRef", "cachePolicyRef",
            "routingPolicyRef", "scaling", "drain", "sessionAffinity", "networkPolicy"} <= set(spec)
    assert set(spec["stores"]["properties"]) == {"redis", "postgres", "milvus", "allowPodLocalState"}
    assert "urlSecretRef" in spec["stores"]["properties"]["redis"]["properties"]
    assert set(spec["scaling"]["properties"]["keda"]["properties"]) >= {
        "enabled", "activeSessionsPerPod", "pendingRequestsPerPod", "prometheusAddress", "cooldownSeconds"}
    assert spec["sessionAffinity"]["enum"] == ["ClientIP", "None"]
    assert set(spec["runtime"]["properties"]) >= {"models", "agents", "tools", "mcpServers", "memory",
                                                  "rateLimits", "embedder"}


def test_replicas_carry_a_cel_rule_and_bounds() -> None:
    replicas = schema_of("agentdeployments.strata.dev.yaml")["properties"]["spec"]["properties"]["replicas"]
    assert replicas["properties"]["min"]["minimum"] == 1
    assert [r["rule"] for r in replicas["x-kubernetes-validations"]] == ["self.min <= self.max"]


def test_tool_schemas_are_free_form_but_nothing_else_is() -> None:
    preserved = [p for p, n in walk(schema_of("agentdeployments.strata.dev.yaml"))
                 if n.get("x-kubernetes-preserve-unknown-fields")]
    assert preserved == [".spec.runtime.tools[].inputSchema", ".spec.runtime.tools[].outputSchema"]


def test_cache_policy_spec_matches_the_runtime_defaults() -> None:
    spec = schema_of("cachepolicies.strata.dev.yaml")["properties"]["spec"]
    from strata_runtime.config import CachePolicySpec

    semantic = spec["properties"]["semantic"]["properties"]
    assert semantic["threshold"].get("default") == CachePolicySpec().semantic.threshold  # unset: the verifier
    assert semantic["maxWrongHitRate"]["default"] == CachePolicySpec().semantic.max_wrong_hit_rate
    assert spec["properties"]["scope"]["default"] == CachePolicySpec().scope
    assert spec["properties"]["scope"]["enum"] == ["tenant", "user", "shared"]
    assert spec["default"] == {}


def test_conditions_are_a_map_keyed_by_type() -> None:
    for file in all_crds():
        conditions = schema_of(file)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def _models_of(annotation: Any, found: dict[str, type[BaseModel]]) -> dict[str, type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation.__name__ not in found:
        found[annotation.__name__] = annotation
        for info in annotation.model_fields.values():
            _models_of(info.annotation, found)
    for arg in typing.get_args(annotation):
        _models_of(arg, found)
    return found


def test_every_validated_model_of_the_crds_has_its_api_server_twin_or_a_reason() -> None:
    """A model validator the API server does not know admits invalid resources that the operator then
    only reports: each one gets CEL rules or list keys (crdgen.py), or says in NOT_IN_CEL why not."""
    models = _models_of(AgentDeploymentSpec, {})
    _models_of(CachePolicySpec, models)
    _models_of(RoutingPolicySpec, models)
    validated = {name for name, model in models.items()
                 if model.__pydantic_decorators__.model_validators or model.__pydantic_decorators__.field_validators}
    assert {"ToolConfig", "RoutingRule", "ComplexityFeature"} <= validated
    covered = set(CEL_RULES) | set(LIST_MAP_KEYS) | set(NOT_IN_CEL)
    assert validated <= covered, sorted(validated - covered)
    # RuntimeConfig's cross-references are checked on the part of it the CRD holds
    assert "AgentRuntimeSpec" in CEL_RULES and "AgentRuntimeSpec" in LIST_MAP_KEYS
