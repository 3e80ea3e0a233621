"""The operator's own settings reach the renderer: the baseUrl allow-list from its environment
(the chart sets STRATA_BASE_URL_ALLOW_LIST) and the UIDs of the Secrets it reads (the secret part
of the secrets-hash key). The controller reads real Secrets from the real API server here.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from strata_operator.allowlist import BaseUrlAllowList
from strata_operator.cli import parse_settings
from strata_operator.controller import Controller
from strata_operator.k8s import Kube
from strata_operator.reconcile import Inputs, Owner, RenderError, render, secrets_hash
from tests.operator.fixtures_operator import Kubectl, agent_deployment, apply_yaml, get_json, routing_policy, secrets

pytestmark = pytest.mark.operator

ALLOW = {"cluster": ["https://api.openai.com"], "namespaces": {"team-a": ["http://vllm.team-a:8000"]}}


def test_the_allow_list_is_read_from_the_environment() -> None:
    settings = parse_settings([], env={"STRATA_BASE_URL_ALLOW_LIST": json.dumps(ALLOW)})
    assert settings.base_url_allow_list is not None
    assert [str(o) for o in settings.base_url_allow_list.for_namespace("team-a")] == [
        "https://api.openai.com:443", "http://vllm.team-a:8000"]
    assert [str(o) for o in settings.base_url_allow_list.for_namespace("team-b")] == ["https://api.openai.com:443"]
    assert parse_settings([], env={}).base_url_allow_list is None


@pytest.mark.parametrize("text", ['{"cluster": ["api.openai.com"]}', "not json", '{"hosts": []}'])
def test_a_malformed_allow_list_stops_the_operator_with_a_usage_error(text: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings([], env={"STRATA_BASE_URL_ALLOW_LIST": text})
    assert exited.value.code == 2
    assert "STRATA_BASE_URL_ALLOW_LIST" in capsys.readouterr().err


async def inputs_for(kubeconfig: str, namespace: str, base_url: str) -> Inputs:
    kube = await Kube.connect(kubeconfig)
    try:
        controller = Controller(kube, base_url_allow_list=BaseUrlAllowList.parse(json.dumps(ALLOW)))
        spec = agent_deployment(namespace, cache=None)["spec"]
        spec["runtime"]["models"][0]["baseUrl"] = base_url
        owner = Owner("support", namespace, "0b9a3c1e-0000-4000-8000-000000000001")
        return await controller._inputs(owner, spec, lambda key: None, lambda key: routing_policy(namespace), {})
    finally:
        await kube.close()


def test_the_controller_passes_the_allow_list_and_the_secret_uids(kubectl: Kubectl, kubeconfig: str,
                                                                  namespace: str) -> None:
    apply_yaml(kubectl, namespace, *secrets(namespace))
    refused = asyncio.run(inputs_for(kubeconfig, namespace, "https://collector.example/v1"))
    with pytest.raises(RenderError) as error:
        render(refused)
    assert error.value.reason == "BaseUrlNotAllowed"

    inputs = asyncio.run(inputs_for(kubeconfig, namespace, "https://api.openai.com/v1"))
    uids = {name: get_json(kubectl, "-n", namespace, "secret", name)["metadata"]["uid"]
            for name in ("openai", "acme-keys", "strata-redis")}
    assert inputs.secret_uids == uids
    desired = render(inputs)
    assert desired.secrets_hash == secrets_hash(inputs)
    # The UIDs are part of the key: without them (what an annotation reader could rebuild) the hash differs.
    assert desired.secrets_hash != secrets_hash(Inputs(**{**vars(inputs), "secret_uids": {}}))
