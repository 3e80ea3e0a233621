"""values.schema.json: helm refuses bad values with a message naming them; the chart's own PDB,
anti-affinity, Secret grants and baseUrl allow-list render as values.yaml documents."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from strata_operator.cli import parse_settings

pytestmark = pytest.mark.operator

CHART = str(Path(__file__).resolve().parents[2] / "charts" / "strata")


def template(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("helm")
    if binary is None:
        pytest.fail('helm is not on PATH: eval "$(hack/control-plane.sh env)"', pytrace=False)
    command = [binary, "template", "strata", CHART, "-n", "strata-system", "--kube-version", "1.35.0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def docs(*args: str) -> list[dict[str, Any]]:
    result = template(*args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def one(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [obj] = [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return obj


@pytest.mark.parametrize(("flag", "named"), [
    ("replicaCount=two", "replicaCount"),
    ("replicas=2", "replicas"),  # a typo of replicaCount is not silently ignored
    ("podAntiAffinity=sometimes", "podAntiAffinity"),
    ("crds.install=maybe", "install"),
    ("baseUrlAllowList.cluster={api.openai.com}", "cluster"),  # no scheme
    ("secretAccess.namespaces.team-a=all", "team-a"),  # a list of names or "*"
    ("watchNamespaces={Team_A}", "watchNamespaces"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    ("watchTimeoutSeconds=0", "watchTimeoutSeconds"),
    ("watchTimeoutSeconds=2.5", "watchTimeoutSeconds"),  # the API server takes whole seconds
])
def test_a_bad_value_is_refused_naming_it(flag: str, named: str) -> None:
    result = template("--set", flag)
    assert result.returncode != 0, f"{flag} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert named in result.stderr


def test_the_default_values_pass_the_schema_and_render() -> None:
    kinds = {d["kind"] for d in docs()}
    assert {"Deployment", "PodDisruptionBudget", "CustomResourceDefinition", "ClusterRole"} <= kinds


def test_two_replicas_get_a_pdb_and_spread_over_nodes() -> None:
    rendered = docs()
    pdb = one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    deployment = one(rendered, "Deployment")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    [term] = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    hard = one(docs("--set", "podAntiAffinity=hard"), "Deployment")["spec"]["template"]["spec"]["affinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in hard["podAntiAffinity"]


def test_one_replica_has_no_pdb_and_anti_affinity_can_be_off() -> None:
    rendered = docs("--set", "replicaCount=1", "--set", "podAntiAffinity=none")
    assert not [d for d in rendered if d["kind"] == "PodDisruptionBudget"]
    assert "affinity" not in one(rendered, "Deployment")["spec"]["template"]["spec"]


def secret_rules(documents: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, namespace, rule) of every RBAC rule that mentions Secrets."""
    out = []
    for d in documents:
        for rule in d.get("rules") or []:
            if "secrets" in rule.get("resources", []):
                out.append((d["kind"], d["metadata"].get("namespace", ""), rule))
    return out


def test_by_default_no_binding_grants_any_secret() -> None:
    rendered = docs()
    assert [(k, r["verbs"]) for k, _, r in secret_rules(rendered)] == [("ClusterRole", ["get", "list", "watch"])]
    reader = one(rendered, "ClusterRole", "strata-operator-secret-reader")
    bound = {d["roleRef"]["name"] for d in rendered if d["kind"] in ("ClusterRoleBinding", "RoleBinding")}
    assert reader["metadata"]["name"] not in bound


def test_secret_access_per_namespace_is_by_name_or_whole_namespace() -> None:
    rendered = docs("--set-json", 'secretAccess.namespaces={"team-a": ["openai", "acme-keys"], "team-b": "*"}')
    roles = {ns: rule for kind, ns, rule in secret_rules(rendered) if kind == "Role"}
    assert roles["team-a"]["resourceNames"] == ["openai", "acme-keys"]
    assert "resourceNames" not in roles["team-b"]
    bindings = {d["metadata"]["namespace"] for d in rendered if d["kind"] == "RoleBinding"}
    assert bindings == {"team-a", "team-b"}


def test_cluster_wide_secret_access_is_an_explicit_choice() -> None:
    rendered = docs("--set", "secretAccess.clusterWide=true")
    binding = one(rendered, "ClusterRoleBinding", "strata-operator-secret-reader")
    assert binding["roleRef"]["name"] == "strata-operator-secret-reader"


def test_the_base_url_allow_list_reaches_the_operator_as_json() -> None:
    rendered = docs("--set-json", 'baseUrlAllowList.namespaces={"team-a": ["http://vllm.team-a.svc:8000"]}')
    env = {e["name"]: e.get("value") for e in
           one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    allow = json.loads(env["STRATA_BASE_URL_ALLOW_LIST"])
    assert "https://api.openai.com" in allow["cluster"]
    assert allow["namespaces"] == {"team-a": ["http://vllm.team-a.svc:8000"]}
    off = one(docs("--set", "baseUrlAllowList.enabled=false"), "Deployment")
    names = {e["name"] for e in off["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "STRATA_BASE_URL_ALLOW_LIST" not in names


def test_the_watch_timeout_reaches_the_operator() -> None:
    def operator_env(*args: str) -> dict[str, str]:
        container = one(docs(*args), "Deployment")["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container["env"] if "value" in e}

    assert operator_env()["STRATA_WATCH_TIMEOUT_SECONDS"] == "300"
    env = operator_env("--set", "watchTimeoutSeconds=120")
    assert env["STRATA_WATCH_TIMEOUT_SECONDS"] == "120"
    settings = parse_settings([], env)  # what the operator makes of the rendered environment
    assert settings.watch_server_timeout_seconds == 120
    assert settings.watch_idle_timeout_seconds == 75  # min(120, the 60 s bookmark period) + 15
