"""The CRDs' CEL rules and list keys on a real API server, against the runtime's own validation.

Every case is sent to the API server (a dry-run create: 422 and a message naming the field, or
accepted) and validated by the runtime's models (AgentDeploymentSpec and the RuntimeConfig the
operator renders from it, or the policy's spec model). The API server must never refuse what the
runtime accepts; where the runtime refuses something CEL cannot express (a regular expression, a
blank keyword, the tools an agent names), the API server admits it and the operator reports
Stalled/InvalidSpec (tests/operator/test_operator_gitops.py).

The CRDs of crds/ are installed under an API group and resource names of this module's own (the same
schemas), so these tests never race the shared strata.dev CRDs other tests apply and replace, and
`kubectl get agentdeployments` in other tests never finds these.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from kubernetes import client
from pydantic import ValidationError

from strata_operator.models import AgentDeploymentSpec
from strata_runtime.config import CachePolicySpec, RoutingPolicySpec, RuntimeConfig
from tests.operator.fixtures_operator import ROOT, Kubectl, apply_yaml, wait_until

pytestmark = pytest.mark.operator

VERSION = "v1alpha1"
PLURALS = {"AgentDeployment": "agentdeployments", "CachePolicy": "cachepolicies", "RoutingPolicy": "routingpolicies"}


@dataclass(frozen=True)
class Group:
    """An API group of a test's own, its resources renamed with a prefix (cel1a2b3c4dagentdeployments)."""

    name: str
    prefix: str

    @staticmethod
    def new(what: str) -> Group:
        prefix = f"{what}{uuid.uuid4().hex[:8]}"
        return Group(f"{prefix}.strata.test", prefix)

    def kind(self, kind: str) -> str:
        return f"{self.prefix.capitalize()}{kind}"

    def plural(self, kind: str) -> str:
        return f"{self.prefix}{PLURALS[kind]}"

    def body(self, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": f"{self.name}/{VERSION}", "kind": self.kind(kind), "metadata": {"name": name},
                "spec": spec}

    def crds(self) -> list[dict[str, Any]]:
        """The CRDs of crds/, renamed into this group."""
        crds = []
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text(encoding="utf-8"))
            kind = crd["spec"]["names"]["kind"]
            crd["spec"]["group"] = self.name
            crd["spec"]["names"] = {"kind": self.kind(kind), "listKind": f"{self.kind(kind)}List",
                                    "plural": self.plural(kind), "singular": self.kind(kind).lower()}
            crd["metadata"]["name"] = f"{self.plural(kind)}.{self.name}"
            crds.append(crd)
        return crds


def install(kubectl: Kubectl, crds: list[dict[str, Any]]) -> None:
    apply_yaml(kubectl, None, *crds)
    for crd in crds:
        kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s")


@pytest.fixture(scope="module")
def group(kubectl: Kubectl) -> Iterator[Group]:
    """The checked-in CRDs, installed under a group of their own for this module."""
    group = Group.new("cel")
    crds = group.crds()
    try:
        install(kubectl, crds)
        yield group
    finally:
        kubectl("delete", "crd", "--wait=false", *(c["metadata"]["name"] for c in crds), check=False)


@pytest.fixture(scope="module")
def cel_namespace(k8s_client: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(k8s_client)
    name = f"crd-cel-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"strata-test": "1"})))
    try:
        yield name
    finally:
        core.delete_namespace(name)


Create = Callable[[str, dict[str, Any]], str | None]


@pytest.fixture
def create(k8s_client: client.ApiClient, group: Group, cel_namespace: str) -> Create:
    """Send a spec to the API server (dry run): None if accepted, else the 422's message."""
    api = client.CustomObjectsApi(k8s_client)

    def run(kind: str, spec: dict[str, Any]) -> str | None:
        try:
            api.create_namespaced_custom_object(group.name, VERSION, cel_namespace, group.plural(kind),
                                                group.body(kind, "cel", spec), dry_run="All")
        except client.ApiException as e:
            assert e.status == 422, f"{e.status}: {e.body}"
            return str(json.loads(e.body)["message"])
        return None

    return run


def runtime_error(kind: str, spec: dict[str, Any]) -> str | None:
    """None if the runtime accepts the spec, else its validation error."""
    try:
        if kind == "AgentDeployment":
            parsed = AgentDeploymentSpec.model_validate(spec)
            # What the operator renders and the runtime loads (the operator sets auth itself).
            RuntimeConfig.model_validate({**parsed.runtime.model_dump(by_alias=True), "auth": {"mode": "none"}})
        elif kind == "RoutingPolicy":
            RoutingPolicySpec.model_validate(spec)
        else:
            CachePolicySpec.model_validate(spec)
    except ValidationError as e:
        return str(e)
    return None


BASE_RUNTIME: dict[str, Any] = {
    "models": [{"name": "m", "provider": "demo"}],
    "agents": [{"id": "support", "tenant": "acme", "model": "m"}],
}


def deployment(**runtime: Any) -> dict[str, Any]:
    return {"runtime": {**copy.deepcopy(BASE_RUNTIME), **runtime}}


def models(*entries: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"provider": "demo", **e} for e in entries]


def tool(**fields: Any) -> dict[str, Any]:
    return {"id": "t", "name": "t", **fields}


def mcp(**fields: Any) -> dict[str, Any]:
    return {"name": "srv", **fields}


def rule(**fields: Any) -> dict[str, Any]:
    return {"route": "direct", **fields}


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    spec: dict[str, Any]
    # Expected verdicts; `where` and `says` are what the API server's refusal must contain.
    runtime_ok: bool
    api_ok: bool
    where: str = ""
    says: str = ""
    note: str = field(default="", compare=False)


AD, RP = "AgentDeployment", "RoutingPolicy"
UNKNOWN_MODEL = "must name a model of runtime.models"

CASES = [
    # agents[].model and models[].fallbacks name models of the same runtime
    Case("agent-model-known", AD, deployment(), True, True),
    Case("agent-model-unknown", AD, deployment(agents=[{"id": "a", "tenant": "t", "model": "gpt-x"}]),
         False, False, "spec.runtime.agents", "runtime.agents[].model " + UNKNOWN_MODEL),
    Case("fallback-known", AD, deployment(models=models({"name": "m", "fallbacks": ["n"]}, {"name": "n"})), True, True),
    Case("fallback-self", AD, deployment(models=models({"name": "m", "fallbacks": ["m"]})), True, True),
    Case("fallback-unknown", AD, deployment(models=models({"name": "m", "fallbacks": ["n", "gone"]}, {"name": "n"})),
         False, False, "spec.runtime.models", "runtime.models[].fallbacks " + "must name models of runtime.models"),
    Case("llm-parsing-model-known", AD, deployment(agentManager={"llmParsing": {"enabled": True, "model": "m"}}),
         True, True),
    Case("llm-parsing-model-empty", AD, deployment(agentManager={"llmParsing": {"model": ""}}), True, True),
    Case("llm-parsing-model-null", AD, deployment(agentManager={"llmParsing": {"model": None}}), True, True),
    Case("llm-parsing-model-unknown", AD, deployment(agentManager={"llmParsing": {"model": "gpt-x"}}),
         False, False, "spec.runtime.agentManager.llmParsing.model", "llmParsing.model " + UNKNOWN_MODEL),
    # unique names (list-map keys)
    Case("models-duplicate", AD, deployment(models=models({"name": "m"}, {"name": "m"})),
         False, False, "spec.runtime.models[1]", "Duplicate value"),
    Case("agents-duplicate", AD, deployment(agents=[{"id": "a", "tenant": "t", "model": "m"},
                                                    {"id": "a", "tenant": "t", "model": "m"}]),
         False, False, "spec.runtime.agents[1]", "Duplicate value"),
    Case("agents-same-id-two-tenants", AD, deployment(agents=[{"id": "a", "tenant": "t", "model": "m"},
                                                              {"id": "a", "tenant": "u", "model": "m"}]), True, True),
    Case("tools-duplicate", AD, deployment(tools=[tool(executor="mcp", target="srv/x"),
                                                  tool(executor="mcp", target="srv/y")]),
         False, False, "spec.runtime.tools[1]", "Duplicate value"),
    Case("mcp-servers-duplicate", AD, deployment(mcpServers=[mcp(url="http://a"), mcp(url="http://b")]),
         False, False, "spec.runtime.mcpServers[1]", "Duplicate value"),
    Case("skills-duplicate", AD, deployment(agents=[{"id": "a", "tenant": "t", "model": "m",
                                                     "skills": [{"name": "s"}, {"name": "s"}]}]),
         False, False, "spec.runtime.agents[0].skills[1]", "Duplicate value"),
    Case("skills-distinct", AD, deployment(agents=[{"id": "a", "tenant": "t", "model": "m",
                                                    "skills": [{"name": "s"}, {"name": "r"}]}]), True, True),
    # a tool's target fits its executor
    Case("tool-http-url", AD, deployment(tools=[tool(executor="http", target="https://tools.example/x")]), True, True),
    Case("tool-http-not-a-url", AD, deployment(tools=[tool(executor="http", target="tools.example/x")]),
         False, False, "spec.runtime.tools[0].target", "must be an http(s) URL for executor http"),
    Case("tool-http-ftp", AD, deployment(tools=[tool(executor="http", target="ftp://tools.example")]),
         False, False, "spec.runtime.tools[0].target", "must be an http(s) URL for executor http"),
    Case("tool-python-entry-point", AD, deployment(tools=[tool(executor="python", target="pkg.mod:fn")]), True, True),
    Case("tool-python-no-colon", AD, deployment(tools=[tool(executor="python", target="pkg.mod.fn")]),
         False, False, "spec.runtime.tools[0].target", "must be 'module:function' for executor python"),
    Case("tool-mcp-any-target", AD, deployment(tools=[tool(executor="mcp", target="srv/x")]), True, True),
    # an MCP server has the address of its transport
    Case("mcp-http-url", AD, deployment(mcpServers=[mcp(url="http://mcp.example/mcp")]), True, True),
    Case("mcp-http-no-url", AD, deployment(mcpServers=[mcp(transport="http")]),
         False, False, "spec.runtime.mcpServers[0].url", "url is required for transport http"),
    Case("mcp-http-empty-url", AD, deployment(mcpServers=[mcp(url="")]),
         False, False, "spec.runtime.mcpServers[0].url", "url is required for transport http"),
    Case("mcp-stdio-command", AD, deployment(mcpServers=[mcp(transport="stdio", command=["srv"])]), True, True),
    Case("mcp-stdio-no-command", AD, deployment(mcpServers=[mcp(transport="stdio", url="http://x")]),
         False, False, "spec.runtime.mcpServers[0].command", "command is required for transport stdio"),
    # memory buffer cap
    Case("memory-cap-equal", AD, deployment(memory={"bufferTurns": 10, "maxBufferTurns": 10}), True, True),
    Case("memory-cap-unset", AD, deployment(memory={"bufferTurns": 50}), True, True),
    Case("memory-cap-below", AD, deployment(memory={"bufferTurns": 10, "maxBufferTurns": 9}),
         False, False, "spec.runtime.memory.maxBufferTurns", "maxBufferTurns must be at least memory.bufferTurns"),
    Case("memory-cap-below-default", AD, deployment(memory={"maxBufferTurns": 5}),
         False, False, "spec.runtime.memory.maxBufferTurns", "maxBufferTurns must be at least memory.bufferTurns"),
    # the embedder can serve its model
    Case("embedder-local-known", AD, deployment(embedder={"model": "multilingual-e5-small"}), True, True),
    Case("embedder-local-unknown", AD, deployment(embedder={"model": "text-embedding-3-small"}),
         False, False, "spec.runtime.embedder.model", "embedder.model must be one of the local provider's models"),
    Case("embedder-openai", AD, deployment(embedder={"provider": "openai", "model": "text-embedding-3-small",
                                                     "baseUrl": "https://api.openai.com/v1"}), True, True),
    Case("embedder-openai-no-base-url", AD, deployment(embedder={"provider": "openai", "model": "x"}),
         False, False, "spec.runtime.embedder.baseUrl", "embedder.baseUrl is required for provider openai"),
    Case("embedder-openai-empty-base-url", AD, deployment(embedder={"provider": "openai", "baseUrl": ""}),
         False, False, "spec.runtime.embedder.baseUrl", "embedder.baseUrl is required for provider openai"),
    # the bounds that keep the rules within the API server's cost budget hold in the runtime too
    Case("models-at-the-bound", AD, deployment(models=models(*({"name": f"m{i}"} for i in range(99)), {"name": "m"})),
         True, True),
    Case("models-over-the-bound", AD, deployment(models=models(*({"name": f"m{i}"} for i in range(100)),
                                                               {"name": "m"})),
         False, False, "spec.runtime.models", "must have at most 100 items"),
    Case("fallbacks-over-the-bound", AD, deployment(models=models({"name": "m", "fallbacks": ["m"] * 11})),
         False, False, "spec.runtime.models[0].fallbacks", "must have at most 10 items"),
    Case("model-name-too-long", AD, deployment(models=models({"name": "m"}, {"name": "x" * 129})),
         False, False, "spec.runtime.models[1].name", "may not be more than 128"),
    # a routing rule has exactly one matcher
    Case("rule-pattern", RP, {"rules": [rule(pattern="^hi$")]}, True, True),
    Case("rule-keywords", RP, {"rules": [rule(keywords=["hi", "你好"])]}, True, True),
    Case("rule-null-pattern-and-keywords", RP, {"rules": [rule(pattern=None, keywords=["hi"])]}, True, True),
    Case("rule-both", RP, {"rules": [rule(pattern="^hi$", keywords=["hi"])]},
         False, False, "spec.rules[0].pattern", "set exactly one of pattern or keywords"),
    Case("rule-neither", RP, {"rules": [rule()]},
         False, False, "spec.rules[0].pattern", "set exactly one of pattern or keywords"),
    Case("rule-empty-keywords", RP, {"rules": [rule(keywords=[])]},
         False, False, "spec.rules[0].pattern", "set exactly one of pattern or keywords"),
    Case("semantic-skills-duplicate", RP, {"semantic": {"skills": [{"name": "s", "high": 0.8, "low": 0.5},
                                                                  {"name": "s", "high": 0.7, "low": 0.4}]}},
         False, False, "spec.semantic.skills[1]", "Duplicate value"),
    # What CEL cannot check: the API server admits it, the operator reports it (Stalled/InvalidSpec).
    Case("rule-invalid-regex", RP, {"rules": [rule(pattern="(unclosed")]}, False, True,
         note="regular expressions are Python's: only the runtime can compile them"),
    Case("feature-invalid-regex", RP, {"heuristic": {"features": [{"name": "x", "pattern": "[", "weight": 0.1}]}},
         False, True, note="regular expressions are Python's"),
    Case("rule-blank-keyword", RP, {"rules": [rule(keywords=["hi", "  "])]}, False, True,
         note="trimming every keyword of every rule is over the cost budget"),
    Case("agent-tool-unknown", AD, deployment(agents=[{"id": "a", "tenant": "t", "model": "m", "tools": ["gone"]}]),
         False, True, note="agents x their tools x tool ids is over the cost budget"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_api_server_and_the_runtime_agree(case: Case, create: Create) -> None:
    runtime = runtime_error(case.kind, case.spec)
    api = create(case.kind, case.spec)
    assert (runtime is None) == case.runtime_ok, runtime
    assert (api is None) == case.api_ok, api
    assert case.api_ok or not case.runtime_ok  # never refused by the API server when the runtime accepts it
    if api is not None:
        assert case.where in api and case.says in api, api


def test_a_duplicate_sent_by_server_side_apply_is_refused_naming_the_list(kubectl: Kubectl, group: Group,
                                                                         cel_namespace: str) -> None:
    """GitOps tools apply server-side: there the list keys refuse a duplicate before validation (the API
    server answers 500 rather than 422, but names the list and the key)."""
    body = group.body(AD, "dup", deployment(models=models({"name": "m"}, {"name": "m"})))
    result = apply_yaml(kubectl, cel_namespace, body, check=False)
    assert result.returncode != 0
    assert '.spec.runtime.models: duplicate entries for key [name="m"]' in result.stderr, result.stderr


FULL_RUNTIME: dict[str, Any] = {
    "models": models({"name": "m", "fallbacks": ["n"]}, {"name": "n", "fallbacks": ["m"]}),
    "agents": [
        {"id": "support", "tenant": "acme", "model": "m", "tools": ["lookup", "docs.search", "run"],
         "skills": [{"name": "billing", "tools": ["lookup"]}, {"name": "docs", "tools": ["docs.fetch"]}]},
        {"id": "support", "tenant": "globex", "model": "n"},
    ],
    "tools": [tool(id="lookup", executor="http", target="http://lookup.tools.svc/x"),
              tool(id="run", executor="python", target="strata_tools.demo:run"),
              tool(id="docs-get", executor="mcp", target="docs/get")],
    "mcpServers": [mcp(name="docs", url="https://docs.example/mcp"), mcp(name="local", transport="stdio",
                                                                         command=["python", "-m", "srv"])],
    "memory": {"bufferTurns": 8, "maxBufferTurns": 32},
    "embedder": {"provider": "openai", "model": "text-embedding-3-small", "baseUrl": "https://api.openai.com/v1"},
    "agentManager": {"llmParsing": {"enabled": True, "model": "n"}},
}


def test_a_spec_using_every_checked_field_is_accepted_by_both(create: Create) -> None:
    spec = {"runtime": FULL_RUNTIME}
    assert runtime_error(AD, spec) is None
    assert create(AD, spec) is None


def test_the_samples_are_accepted_by_both(create: Create) -> None:
    for path in sorted((ROOT / "manifests" / "samples" / "agents").glob("*.yaml")):
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
        if obj["kind"] not in PLURALS:
            continue
        assert runtime_error(obj["kind"], obj.get("spec") or {}) is None, path
        assert create(obj["kind"], obj.get("spec") or {}) is None, path


def _without_the_new_checks(node: Any) -> Any:
    """A schema as it was before the CEL rules and list keys (the ones older releases had stay out too)."""
    if isinstance(node, dict):
        dropped = {"x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys"}
        return {k: _without_the_new_checks(v) for k, v in node.items() if k not in dropped}
    if isinstance(node, list):
        return [_without_the_new_checks(v) for v in node]
    return node


def test_a_resource_stored_before_the_rules_still_takes_status_and_metadata_writes(
        kubectl: Kubectl, k8s_client: client.ApiClient, cel_namespace: str) -> None:
    """Upgrading the CRDs does not lock out an invalid AgentDeployment stored earlier: the API server
    ratchets (an unchanged invalid field is only a warning), so the operator can still add its
    finalizer and write Stalled/InvalidSpec, and the owner can fix the spec."""
    group = Group.new("ratchet")
    (crd,) = [c for c in group.crds() if c["spec"]["names"]["kind"] == group.kind(AD)]
    api = client.CustomObjectsApi(k8s_client)
    where = (group.name, VERSION, cel_namespace, group.plural(AD))
    try:
        install(kubectl, [_without_the_new_checks(crd)])
        spec = deployment(models=models({"name": "m"}, {"name": "m"}), agents=[{"id": "a", "tenant": "t",
                                                                               "model": "gpt-x"}])
        api.create_namespaced_custom_object(*where, group.body(AD, "old", spec))
        install(kubectl, [crd])

        def refused() -> bool:
            try:
                api.create_namespaced_custom_object(*where, group.body(AD, "new", spec), dry_run="All")
            except client.ApiException as e:
                return e.status == 422
            return False

        wait_until(refused, 30, "the new rules in force (the same spec refused)")
        api.patch_namespaced_custom_object(*where, "old", {"metadata": {"finalizers": ["strata.dev/test"]}})
        api.patch_namespaced_custom_object_status(*where, "old", {"status": {"conditions": [
            {"type": "Stalled", "status": "True", "reason": "InvalidSpec", "message": "unknown model 'gpt-x'"}]}})
        api.patch_namespaced_custom_object(*where, "old", {"metadata": {"finalizers": None}})
        fixed = {"runtime": {"agents": [{"id": "a", "tenant": "t", "model": "m"}],
                             "models": [{"name": "m", "provider": "demo"}]}}
        api.patch_namespaced_custom_object(*where, "old", {"spec": fixed})
    finally:
        kubectl("delete", "crd", "--wait=false", crd["metadata"]["name"], check=False)
