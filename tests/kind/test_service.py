"""The operator (installed by Helm, as a pod) turns an AgentDeployment into runtime pods that
answer through their Service: the OpenAI SDK and /api/v1/query, over the in-cluster upstream."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Callable

import openai
import pytest

from tests.kind.conftest import ACME_KEY, NAMESPACE, Kube

pytestmark = pytest.mark.kind


@pytest.fixture(scope="module")
def base_url(deploy_agent: Callable[..., str]) -> str:
    return deploy_agent("support")


def post(url: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {ACME_KEY}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


def test_the_operator_runs_as_a_pod_installed_by_helm(kube: Kube) -> None:
    deploy = json.loads(kube.run("get", "deploy", "strata-operator", "-n", "strata-system", "-o", "json"))
    assert deploy["status"].get("readyReplicas", 0) >= 1
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("strata-operator:")


def test_the_runtime_pods_are_ready_behind_their_service(kube: Kube, base_url: str) -> None:
    agent = kube.get("agentdeployment", "support")
    ready = {c["type"]: c["status"] for c in agent["status"]["conditions"]}
    assert ready["Ready"] == "True"
    endpoints = json.loads(kube.run("get", "endpoints", "support", "-n", NAMESPACE, "-o", "json"))
    addresses = [a for subset in endpoints.get("subsets", []) for a in subset.get("addresses", [])]
    assert addresses, endpoints
    pod = kube.pods("app.kubernetes.io/instance=support")[0]
    spec = pod["spec"]["containers"][0]
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_openai_sdk_through_the_service(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=ACME_KEY, max_retries=0)
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello from the cluster"}])
    assert completion.choices[0].message.content == "echo: hello from the cluster"
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream through a real pod"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: stream through a real pod"


def test_the_query_api_through_the_service(base_url: str) -> None:
    sid = f"kind-{uuid.uuid4().hex[:12]}"
    status, body = post(base_url + "/api/v1/query", {"message": "hi there pod", "session_id": sid,
                                                     "chatbot_id": "support"})
    assert status == 200, body
    assert body["message"] == "echo: hi there pod" and body["status"] == "completed"
