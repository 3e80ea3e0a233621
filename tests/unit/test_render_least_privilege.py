"""What the renderer does to keep an AgentDeployment author within bounds: the baseUrl
allow-list, NetworkPolicy defaults and egress, and a secrets-hash annotation that reveals nothing."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from strata_operator.allowlist import AllowListError, BaseUrlAllowList, allowed, parse_origin
from strata_operator.reconcile import ANNOTATION_SECRETS_HASH, Inputs, Owner, RenderError, render
from tests.unit.test_render_agent import OWNER, RUNTIME, SECRETS, inputs, kind, spec

pytestmark = pytest.mark.unit

OPENAI = BaseUrlAllowList.parse('{"cluster": ["https://api.openai.com"]}')


def network_policy(**np: Any) -> dict[str, Any]:
    return kind(render(inputs(spec=spec(networkPolicy=np))), "NetworkPolicy")["spec"]  # type: ignore[no-any-return]


def secrets_hash(data: Inputs) -> str:
    deployment = kind(render(data), "Deployment")
    return str(deployment["spec"]["template"]["metadata"]["annotations"][ANNOTATION_SECRETS_HASH])


def with_model_url(url: str) -> Any:
    models = [{**RUNTIME["models"][0], "baseUrl": url}]
    return spec(runtime={**RUNTIME, "models": models})


def test_a_model_base_url_outside_the_allow_list_is_rejected_with_its_own_reason() -> None:
    with pytest.raises(RenderError) as err:
        render(inputs(spec=with_model_url("https://collector.attacker.example/v1"),
                      allowed_base_urls=OPENAI.for_namespace("acme")))
    assert err.value.reason == "BaseUrlNotAllowed"
    assert "runtime.models[gpt-4.1-mini].baseUrl" in err.value.message
    assert "https://api.openai.com:443" in err.value.message


def test_an_allowed_origin_renders_and_no_allow_list_means_no_check() -> None:
    render(inputs(allowed_base_urls=OPENAI.for_namespace("acme")))  # https://api.openai.com/v1
    render(inputs(spec=with_model_url("https://collector.attacker.example/v1")))


def test_the_embedder_base_url_is_checked_too() -> None:
    embedder = {"provider": "openai", "model": "text-embedding-3-small", "baseUrl": "https://elsewhere.example/v1"}
    with pytest.raises(RenderError, match=r"runtime\.embedder\.baseUrl"):
        render(inputs(spec=spec(runtime={**RUNTIME, "embedder": embedder}),
                      allowed_base_urls=OPENAI.for_namespace("acme")))


def test_namespace_entries_add_to_the_cluster_entries_only_in_their_namespace() -> None:
    policy = BaseUrlAllowList.parse(
        '{"cluster": ["https://api.openai.com"], "namespaces": {"acme": ["http://*.acme.svc:8000"]}}')
    assert allowed("http://vllm.acme.svc:8000/v1", policy.for_namespace("acme"))
    assert not allowed("http://vllm.acme.svc:8000/v1", policy.for_namespace("other"))
    assert not allowed("http://acme.svc:8000/v1", policy.for_namespace("acme"))  # *. needs a subdomain


@pytest.mark.parametrize("url", [
    "https://api.openai.com.attacker.example/v1",  # a string prefix would match
    "https://api.openai.com@attacker.example/v1",  # userinfo
    "http://api.openai.com/v1",  # other scheme
    "https://api.openai.com:8443/v1",  # other port
    "not a url",
])
def test_look_alike_urls_are_not_the_allowed_origin(url: str) -> None:
    assert not allowed(url, OPENAI.cluster)


def test_the_default_port_is_the_same_origin() -> None:
    assert allowed("https://API.openai.com:443/v1", OPENAI.cluster)
    assert parse_origin("https://api.openai.com/v1") == parse_origin("https://api.openai.com:443/x")


@pytest.mark.parametrize("text", ["[]", '{"cluster": "https://a"}', '{"cluster": ["api.openai.com"]}',
                                  '{"cluster": ["https://a.*.example"]}', '{"other": []}', "{"])
def test_a_malformed_allow_list_is_an_error_naming_the_problem(text: str) -> None:
    with pytest.raises(AllowListError, match="allow-list"):
        BaseUrlAllowList.parse(text)


def test_the_default_network_policy_admits_only_its_own_namespace_and_the_scraper() -> None:
    """The default autoscaler reads session depth from Prometheus (http://prometheus.monitoring:9090),
    which must scrape the pods: its namespace is the only other one admitted."""
    rule = network_policy()["ingress"][0]
    assert rule["from"] == [{"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [name]}]}}
        for name in ("acme", "monitoring")]
    assert network_policy()["policyTypes"] == ["Ingress"]


def test_peer_pod_labels_narrow_the_admitted_clients_to_those_pods() -> None:
    rule = network_policy(peerNamespaces=["ingress"], peerPodLabels={"app": "gateway"})["ingress"][0]
    peer, _scraper = rule["from"]
    assert peer["podSelector"] == {"matchLabels": {"app": "gateway"}}
    assert peer["namespaceSelector"]["matchExpressions"][0]["values"] == ["acme", "ingress"]


def test_egress_policy_allows_dns_the_listed_namespaces_and_public_ranges_only() -> None:
    np = network_policy(egress={"enabled": True, "namespaces": ["data"], "cidrs": ["0.0.0.0/0"], "ports": [443]})
    assert np["policyTypes"] == ["Ingress", "Egress"]
    dns, namespaces, public = np["egress"]
    assert {p["port"] for p in dns["ports"]} == {53} and "to" not in dns
    assert namespaces["to"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["data"]
    assert public["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"]}}]
    assert public["ports"] == [{"port": 443, "protocol": "TCP"}]


def test_egress_except_keeps_only_ranges_inside_each_cidr() -> None:
    np = network_policy(egress={"enabled": True, "allowDns": False, "cidrs": ["203.0.113.0/24", "10.1.0.0/16"]})
    [rule] = np["egress"]
    assert rule["to"] == [{"ipBlock": {"cidr": "203.0.113.0/24"}},
                          {"ipBlock": {"cidr": "10.1.0.0/16"}}]  # 10.0.0.0/8 is not inside 10.1.0.0/16


def test_an_invalid_cidr_is_an_invalid_spec() -> None:
    with pytest.raises(RenderError) as err:
        network_policy(egress={"enabled": True, "cidrs": ["300.0.0.0/8"]})
    assert err.value.reason == "InvalidSpec"


def test_the_secrets_hash_is_not_a_plain_hash_of_the_values() -> None:
    value = secrets_hash(inputs())
    assert value.startswith("hmac-sha256:")
    wanted = {"openai": {"apiKey": "sk-secret"}, "strata-pg": {"dsn": "postgresql://u:p@pg/db"},
              "strata-redis": {"url": "redis://r:6379"}, "\0api-keys": SECRETS["acme-keys"]}
    unsalted = hashlib.sha256(orjson.dumps(wanted, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert unsalted not in value


def test_equal_values_hash_differently_per_deployment_and_per_secret_uid() -> None:
    uids = {"openai": "u1", "strata-pg": "u2", "strata-redis": "u3", "acme-keys": "u4"}
    base = secrets_hash(inputs(secret_uids=uids))
    other_owner = Owner(name=OWNER.name, namespace=OWNER.namespace, uid="2222-3333")
    assert secrets_hash(inputs(secret_uids=uids, owner=other_owner)) != base
    assert secrets_hash(inputs(secret_uids={**uids, "openai": "u9"})) != base
    assert secrets_hash(inputs(secret_uids=dict(uids))) == base  # deterministic


def test_rotating_a_value_still_changes_the_hash() -> None:
    uids = {"openai": "u1"}
    rotated = {**SECRETS, "openai": {"apiKey": "sk-rotated"}}
    assert secrets_hash(inputs(secret_uids=uids)) != secrets_hash(inputs(secret_uids=uids, secret_data=rotated))
