"""What the operator would render for an AgentDeployment, without a cluster (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from strata_operator.models import AgentDeploymentSpec, CachePolicySpec, RoutingPolicySpec
from strata_operator.reconcile import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_SECRETS_HASH,
    Desired,
    Inputs,
    Owner,
    RenderError,
    cluster_namespace_of,
    render,
)
from strata_runtime.config import parse_config

pytestmark = pytest.mark.unit

OWNER = Owner(name="support", namespace="acme", uid="0000-1111")

RUNTIME = {
    "models": [{"name": "gpt-4.1-mini", "provider": "openai", "baseUrl": "https://api.openai.com/v1",
                "apiKeyEnv": "OPENAI_API_KEY"}],
    "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4.1-mini"}],
}


def spec(**overrides: Any) -> AgentDeploymentSpec:
    raw: dict[str, Any] = {
        "image": "strata-runtime:0.1.0",
        "replicas": {"min": 2, "max": 20},
        "runtime": RUNTIME,
        "secretEnv": [{"name": "OPENAI_API_KEY", "secretKeyRef": {"name": "openai", "key": "apiKey"}}],
        "stores": {"redis": {"urlSecretRef": {"name": "strata-redis", "key": "url"}, "cluster": True},
                   "postgres": {"dsnSecretRef": {"name": "strata-pg", "key": "dsn"}}},
        "apiKeysSecretRef": {"name": "acme-keys"},
        "drain": {"terminationGracePeriodSeconds": 120, "preStopSleepSeconds": 10},
    }
    raw.update(overrides)
    return AgentDeploymentSpec.model_validate(raw)


SECRETS = {"openai": {"apiKey": "sk-secret"}, "strata-redis": {"url": "redis://r:6379"},
           "strata-pg": {"dsn": "postgresql://u:p@pg/db"}, "acme-keys": {"acme": "key-acme", "beta.co": "key-b"}}


def inputs(**changes: Any) -> Inputs:
    base: dict[str, Any] = {"owner": OWNER, "spec": spec(), "api_key_tenants": ("acme", "beta.co"),
                            "secret_data": SECRETS, "keda_available": True}
    base.update(changes)
    return Inputs(**base)


def kind(desired: Desired, name: str) -> dict[str, Any]:
    [obj] = [o for o in desired.objects if o["kind"] == name]
    return obj


def container(desired: Desired) -> dict[str, Any]:
    return kind(desired, "Deployment")["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_every_child_is_owned_by_the_agent_deployment_as_controller() -> None:
    desired = render(inputs())
    assert {o["kind"] for o in desired.objects} == {
        "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "NetworkPolicy",
        "ServiceAccount", "Role", "RoleBinding"}
    for obj in desired.objects:
        [ref] = obj["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "strata.dev/v1alpha1", "kind": "AgentDeployment", "name": "support",
                       "uid": "0000-1111", "controller": True, "blockOwnerDeletion": True}
        assert obj["metadata"]["namespace"] == "acme"


def test_config_map_holds_a_config_the_runtime_itself_accepts() -> None:
    desired = render(inputs(cache_policy=CachePolicySpec.model_validate({"semantic": {"threshold": 0.95}})))
    text = kind(desired, "ConfigMap")["data"]["config.yaml"]
    config = parse_config(yaml.safe_load(text))
    assert config.cache.semantic.threshold == 0.95
    assert config.stores.redis.url_env == "STRATA_REDIS_URL" and config.stores.redis.cluster
    assert config.stores.sql.backend == "postgresql" and config.stores.sql.dsn_env == "STRATA_PG_DSN"
    assert [(k.tenant, k.key_env) for k in config.auth.api_keys] == [
        ("acme", "STRATA_API_KEY_ACME"), ("beta.co", "STRATA_API_KEY_BETA_CO")]
    assert config.server.port == 8080


def test_secret_values_never_appear_in_any_rendered_object() -> None:
    desired = render(inputs())
    dumped = yaml.safe_dump(desired.objects)
    for data in SECRETS.values():
        for value in data.values():
            assert value not in dumped


def test_secrets_reach_the_pod_only_as_secret_key_refs() -> None:
    env = {e["name"]: e.get("valueFrom") for e in container(render(inputs()))["env"]}
    assert env["STRATA_REDIS_URL"] == {"secretKeyRef": {"name": "strata-redis", "key": "url"}}
    assert env["STRATA_PG_DSN"] == {"secretKeyRef": {"name": "strata-pg", "key": "dsn"}}
    assert env["OPENAI_API_KEY"] == {"secretKeyRef": {"name": "openai", "key": "apiKey"}}
    assert env["STRATA_API_KEY_BETA_CO"] == {"secretKeyRef": {"name": "acme-keys", "key": "beta.co"}}


def test_changing_the_cache_policy_changes_the_pod_template_hash() -> None:
    before = render(inputs(cache_policy=CachePolicySpec()))
    after = render(inputs(cache_policy=CachePolicySpec.model_validate({"exact": {"ttlSeconds": 60}})))
    annotation = lambda d: kind(d, "Deployment")["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    assert annotation(before)[ANNOTATION_CONFIG_HASH] != annotation(after)[ANNOTATION_CONFIG_HASH]
    assert annotation(after)[ANNOTATION_CONFIG_HASH] == after.config_hash


def test_rotating_a_referenced_secret_changes_the_secrets_hash_only() -> None:
    rotated = {**SECRETS, "strata-pg": {"dsn": "postgresql://u:new@pg/db"}}
    before, after = render(inputs()), render(inputs(secret_data=rotated))
    annotations = lambda d: kind(d, "Deployment")["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    assert annotations(before)[ANNOTATION_SECRETS_HASH] != annotations(after)[ANNOTATION_SECRETS_HASH]
    assert before.config_hash == after.config_hash


def test_rendering_is_deterministic() -> None:
    assert render(inputs()).objects == render(inputs()).objects


def test_replicas_are_left_to_the_autoscaler() -> None:
    assert "replicas" not in kind(render(inputs()), "Deployment")["spec"]
    assert "replicas" not in kind(render(inputs(keda_available=False)), "Deployment")["spec"]
    fixed = render(inputs(spec=spec(scaling={"keda": {"enabled": False}}, replicas={"min": 3, "max": 3})))
    assert kind(fixed, "Deployment")["spec"]["replicas"] == 3
    assert fixed.scaler == "none"
    assert {r.kind for r in fixed.stale} == {"ScaledObject", "HorizontalPodAutoscaler", "RoleBinding"}


def test_keda_scaled_object_scales_on_session_depth_and_pending_requests() -> None:
    desired = render(inputs())
    so = kind(desired, "ScaledObject")["spec"]
    assert (so["minReplicaCount"], so["maxReplicaCount"], so["cooldownPeriod"]) == (2, 20, 300)
    queries = {t["name"]: t["metadata"] for t in so["triggers"]}
    # Every pod reports the deployment's count: max, never sum (which would multiply it by the replicas).
    assert queries["session-depth"]["query"].startswith("max(strata_session_depth{")
    assert queries["session-depth"]["threshold"] == "200"
    assert queries["pending-requests"]["query"].startswith("sum(strata_pending_requests{")
    assert queries["pending-requests"]["threshold"] == "20"
    assert 'namespace="acme"' in queries["pending-requests"]["query"]
    # A missing scrape target is an error (KEDA falls back), not a 0 that scales the deployment in.
    assert {q["ignoreNullValues"] for q in queries.values()} == {"false"}
    assert {t["metricType"] for t in so["triggers"]} == {"AverageValue"}
    assert so["fallback"] == {"failureThreshold": 3, "replicas": 2}
    assert [(r.kind, r.name) for r in desired.stale] == [("HorizontalPodAutoscaler", "support"),
                                                        ("RoleBinding", "support-runtime-pods")]


def test_without_keda_an_hpa_takes_its_place() -> None:
    desired = render(inputs(keda_available=False))
    assert desired.scaler == "hpa"
    hpa = kind(desired, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 20)
    assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"} == {
        "strata_pod_session_depth", "strata_pending_requests"}
    assert not [o for o in desired.objects if o["kind"] == "ScaledObject"]


def test_the_metrics_api_trigger_reads_session_depth_from_the_runtime_service() -> None:
    scaling = {"keda": {"trigger": "metricsApi", "activeSessionsPerPod": 10, "fallbackReplicas": 4}}
    desired = render(inputs(spec=spec(scaling=scaling)))
    so = kind(desired, "ScaledObject")["spec"]
    assert so["triggers"] == [{
        "type": "metrics-api", "name": "session-depth", "metricType": "AverageValue",
        "metadata": {"url": "http://support.acme.svc/metrics/session-depth", "format": "json",
                     "valueLocation": "sessionDepth", "targetValue": "10"}}]
    assert so["fallback"] == {"failureThreshold": 3, "replicas": 4}


def test_the_network_policy_admits_keda_only_for_the_metrics_api_trigger() -> None:
    def peers(scaling: dict[str, object], keda: bool = True) -> list[object]:
        desired = render(inputs(spec=spec(scaling=scaling, networkPolicy={"enabled": True}), keda_available=keda))
        return list(kind(desired, "NetworkPolicy")["spec"]["ingress"][0]["from"])

    keda_peer = {"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["autoscalers"]}]}}
    metrics_api = {"keda": {"trigger": "metricsApi", "kedaNamespace": "autoscalers"}}
    assert keda_peer in peers(metrics_api)
    assert keda_peer not in peers({"keda": {"kedaNamespace": "autoscalers"}})
    assert keda_peer not in peers(metrics_api, keda=False)


def test_the_network_policy_admits_the_prometheus_namespace_for_the_prometheus_trigger() -> None:
    """Without it, Prometheus cannot scrape strata_session_depth: the query finds no series and KEDA
    holds the fallback replicas forever."""
    def peers(address: str | None = None, **policy: object) -> list[object]:
        keda: dict[str, object] = {"enabled": True} | ({"prometheusAddress": address} if address else {})
        desired = render(inputs(spec=spec(scaling={"keda": keda}, networkPolicy={"enabled": True, **policy}),
                                keda_available=True))
        return list(kind(desired, "NetworkPolicy")["spec"]["ingress"][0]["from"])

    def namespace(name: str) -> object:
        return {"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [name]}]}}

    assert namespace("monitoring") in peers()  # the default address, http://prometheus.monitoring:9090
    assert namespace("obs") in peers("http://prom-server.obs.svc.cluster.local:80")
    assert len(peers("https://prometheus.example.com")) == len(peers("http://10.0.0.7:9090")) == 1  # own only
    assert peers(allowAllNamespaces=True) == [{"namespaceSelector": {}}]


@pytest.mark.parametrize(("url", "namespace"), [
    ("http://prometheus.monitoring:9090", "monitoring"), ("http://p.obs.svc", "obs"),
    ("http://p.obs.svc.cluster.local:9090/prom", "obs"), ("http://prometheus:9090", None),
    ("http://10.1.2.3:9090", None), ("https://prometheus.example.com", None), ("not a url", None),
])
def test_the_namespace_of_a_service_address(url: str, namespace: str | None) -> None:
    assert cluster_namespace_of(url) == namespace


def test_probes_drain_and_grace_period_follow_the_spec() -> None:
    desired = render(inputs())
    pod = kind(desired, "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 10}}
    assert pod["terminationGracePeriodSeconds"] == 120
    assert desired.config.server.drain_seconds < 120 - 10
    assert c["args"] == ["--config", "/etc/strata/config.yaml"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {t["topologyKey"] for t in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_service_keeps_client_ip_affinity_unless_disabled() -> None:
    assert kind(render(inputs()), "Service")["spec"]["sessionAffinity"] == "ClientIP"
    none = kind(render(inputs(spec=spec(sessionAffinity="None"))), "Service")["spec"]
    assert none["sessionAffinity"] == "None" and "sessionAffinityConfig" not in none


def test_network_policy_can_restrict_to_own_and_peer_namespaces() -> None:
    restricted = spec(networkPolicy={"allowAllNamespaces": False, "peerNamespaces": ["gateway"]})
    rule = kind(render(inputs(spec=restricted)), "NetworkPolicy")["spec"]["ingress"][0]
    peer, _scraper = rule["from"]
    assert peer["namespaceSelector"]["matchExpressions"][0]["values"] == ["acme", "gateway"]
    disabled = render(inputs(spec=spec(networkPolicy={"enabled": False})))
    assert ("NetworkPolicy", "support") in {(r.kind, r.name) for r in disabled.stale}


def test_pdb_never_blocks_a_drain_of_a_single_replica() -> None:
    assert kind(render(inputs()), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_an_agent_naming_an_unknown_model_is_an_invalid_spec() -> None:
    bad = dict(RUNTIME, agents=[{"id": "support", "tenant": "acme", "model": "nope"}])
    with pytest.raises(RenderError) as err:
        render(inputs(spec=spec(runtime=bad)))
    assert err.value.reason == "InvalidSpec" and "nope" in err.value.message


def test_a_model_api_key_env_without_a_secret_env_is_an_invalid_spec() -> None:
    with pytest.raises(RenderError) as err:
        render(inputs(spec=spec(secretEnv=[])))
    assert err.value.reason == "InvalidSpec" and "OPENAI_API_KEY" in err.value.message


def test_secret_env_may_not_shadow_the_operators_own_variables() -> None:
    env = [{"name": "OPENAI_API_KEY", "secretKeyRef": {"name": "openai", "key": "apiKey"}},
           {"name": "STRATA_PG_DSN", "secretKeyRef": {"name": "x", "key": "y"}}]
    with pytest.raises(RenderError, match="reserved"):
        render(inputs(spec=spec(secretEnv=env)))


def test_routing_policy_classifier_must_name_a_known_model() -> None:
    routing = RoutingPolicySpec.model_validate({"classifier": {"model": "missing"}})
    with pytest.raises(RenderError, match="missing"):
        render(inputs(routing_policy=routing))


def test_without_an_api_keys_secret_the_runtime_runs_without_auth() -> None:
    desired = render(inputs(spec=spec(apiKeysSecretRef=None), api_key_tenants=()))
    assert desired.config.auth.mode == "none"


def test_replicas_min_above_max_is_rejected_by_the_model() -> None:
    with pytest.raises(ValueError, match=r"replicas.min"):
        spec(replicas={"min": 5, "max": 2})


def test_the_runtime_container_alone_gets_a_token_of_the_pods_own_service_account() -> None:
    from strata_runtime.agents.in_cluster import SERVICE_ACCOUNT_DIR

    for reporting in (kind(render(inputs(spec=spec(reportAgentsHash=flag))), "Deployment")["spec"]["template"]["spec"]
                      for flag in (False, True)):  # the token serves the ConfigMap watch either way
        _only_the_runtime_container_gets_the_token(reporting, SERVICE_ACCOUNT_DIR)
        assert reporting["serviceAccountName"] == "support-runtime"


def test_only_pods_that_may_report_their_agents_hash_are_told_their_name() -> None:
    # Without spec.reportAgentsHash no RoleBinding lets the pod patch itself: a runtime that knew its
    # name would try anyway and log a 403 five times on every reload.
    for flag in (False, True):
        pod = kind(render(inputs(spec=spec(reportAgentsHash=flag))), "Deployment")["spec"]["template"]["spec"]
        names = {e["name"] for e in pod["containers"][0]["env"]}
        assert ("STRATA_POD_NAME" in names) is flag


def _only_the_runtime_container_gets_the_token(reporting: dict[str, Any], SERVICE_ACCOUNT_DIR: Any) -> None:
    assert reporting["automountServiceAccountToken"] is False  # only this container gets the token
    [volume] = [v for v in reporting["volumes"] if v["name"] == "kube-api-access"]
    paths = {s.get("serviceAccountToken", {}).get("path") for s in volume["projected"]["sources"]}
    assert "token" in paths
    [mount] = [m for m in reporting["containers"][0]["volumeMounts"] if m["name"] == "kube-api-access"]
    assert mount == {"name": "kube-api-access", "mountPath": str(SERVICE_ACCOUNT_DIR), "readOnly": True}
