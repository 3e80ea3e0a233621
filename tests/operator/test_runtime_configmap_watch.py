"""The runtime's watch of its agent definitions ConfigMap through the real kube-apiserver.

Authenticated as a ServiceAccount (a TokenRequest token laid out as the in-cluster mount) that holds
only what the operator renders for it: get/list/watch on that one ConfigMap. The mounted copy of the
definitions (a file the kubelet would refresh a minute later) is left alone, so only the API watch
can deliver a change. A TCP relay in front of the API server stands in for an API server restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from strata_operator.models import AgentDeploymentSpec
from strata_operator.reconcile import Inputs, Owner, render_rbac
from strata_runtime.agents.configmap_watch import ConfigMapTarget, ConfigMapWatch
from strata_runtime.agents.parse_cache import definition_hash
from strata_runtime.agents.registry import AgentRegistry
from strata_runtime.app import create_app
from strata_runtime.config import AgentConfig, RuntimeConfig
from tests.operator.fixtures_operator import Kubectl, apply_yaml
from tests.operator.test_runtime_pod_annotation import account
from tests.unit.test_parse_cache import TEMPLATE, new_cache, runtime_config

pytestmark = pytest.mark.operator

CONFIG_MAP = "support-config"  # what the operator names the ConfigMap of AgentDeployment "support"


def agents_text(prompt: str, **extra: Any) -> str:
    return yaml.safe_dump({"agents": [{"id": "helper", "tenant": "globex", **TEMPLATE, "systemPrompt": prompt,
                                       **extra}]})


def config_map(agents: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP},
            "data": {"config.yaml": "server: {}\n", "agents.yaml": agents}}


def operator_rbac(namespace: str) -> list[dict[str, Any]]:
    """The Role and RoleBinding the operator renders for AgentDeployment "support" (owner references
    dropped: no such AgentDeployment exists here, the garbage collector would delete them)."""
    spec = AgentDeploymentSpec.model_validate({
        "image": "registry.invalid/strata-runtime:0.1.0", "replicas": {"min": 1, "max": 1},
        "runtime": {"models": [{"name": "demo", "provider": "demo"}]}})
    objects, _ = render_rbac(Inputs(owner=Owner("support", namespace, "0000"), spec=spec))
    for obj in objects:
        obj["metadata"].pop("ownerReferences")
    return objects


async def eventually(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> float:
    """Seconds until `predicate` holds (fails after `timeout`: a bound, not a measurement)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def prompt(registry: AgentRegistry) -> str | None:
    served = registry.lookup("globex", "helper")
    return served.config.system_prompt if served else None


class Relay:
    """A TCP relay to the API server that can be taken down (connections cut) and brought back."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self.writers -= {writer, up_writer}


async def started(kubectl: Kubectl, namespace: str, kubeconfig: str, tmp_path: Path, *,
                  env_changes: dict[str, str] | None = None, **watch: Any) -> tuple[AgentRegistry, ConfigMapWatch]:
    await asyncio.to_thread(apply_yaml, kubectl, namespace, config_map(agents_text("v1")), *operator_rbac(namespace))
    env = await asyncio.to_thread(account, kubectl, namespace, "support-runtime", kubeconfig, tmp_path / "sa")
    env |= {"STRATA_AGENTS_CONFIGMAP": CONFIG_MAP, **(env_changes or {})}
    target = ConfigMapTarget.from_environment(env, tmp_path / "sa")
    assert target is not None and target.name == CONFIG_MAP and target.namespace == namespace
    mounted = tmp_path / "agents.yaml"
    mounted.write_text(agents_text("v1"))  # the kubelet's copy at pod start, never refreshed here
    config = runtime_config(agentManager={"definitionsPath": str(mounted), "watchIntervalSeconds": 0.2})
    registry = AgentRegistry(lambda: config, new_cache())
    registry.configmap_watch = ConfigMapWatch(target, registry.apply_data, backoff_seconds=0.1,
                                              max_backoff_seconds=0.5, **watch)
    await registry.start()
    assert prompt(registry) == "v1"
    return registry, registry.configmap_watch


@contextlib.asynccontextmanager
async def running(registry: AgentRegistry) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await registry.close()


async def test_a_config_map_change_is_served_within_seconds_without_the_file(
        kubectl: Kubectl, namespace: str, kubeconfig: str, tmp_path: Path) -> None:
    registry, watch = await started(kubectl, namespace, kubeconfig, tmp_path)
    async with running(registry):
        await eventually(lambda: watch.connected and watch.lists == 1, "the first list")
        reloads = registry.reloads
        begin = time.monotonic()
        await asyncio.to_thread(apply_yaml, kubectl, namespace, config_map(agents_text("v2")))
        await eventually(lambda: prompt(registry) == "v2", "the new prompt through the watch")
        print(f"ConfigMap change served {time.monotonic() - begin:.2f}s after `kubectl apply` started")
        assert registry.applied_from == "configMap" and registry.reloads == reloads + 1
        assert registry.status()["configMapWatch"]["events"] >= 1

        # The kubelet's copy catches up with the same content: not applied a second time.
        (tmp_path / "agents.yaml").write_text(agents_text("v2"))
        await registry.reload()
        assert registry.reloads == reloads + 1 and registry.applied_from == "configMap"
        # A copy older than what the watch delivered (v1, listed at start) does not roll back.
        (tmp_path / "agents.yaml").write_text(agents_text("v1"))
        await registry.reload()
        assert prompt(registry) == "v2" and registry.reloads == reloads + 1


async def test_a_watch_from_an_expired_resource_version_lists_again(
        kubectl: Kubectl, namespace: str, kubeconfig: str, tmp_path: Path) -> None:
    registry, watch = await started(kubectl, namespace, kubeconfig, tmp_path)
    async with running(registry):
        await eventually(lambda: watch.connected and watch.lists == 1, "the first list")
        await watch.close()  # stop it, then resume from a resourceVersion long compacted away
        await asyncio.to_thread(apply_yaml, kubectl, namespace, config_map(agents_text("v3")))
        watch.resource_version = "1"
        watch.start()
        await eventually(lambda: watch.relists == 1, "a 410 Gone and a new list")
        await eventually(lambda: prompt(registry) == "v3", "the listed definitions")
        assert watch.lists == 2 and watch.failures == 0


async def test_an_unreachable_api_server_keeps_the_last_good_definitions_and_the_watch_recovers(
        kubectl: Kubectl, namespace: str, kubeconfig: str, tmp_path: Path) -> None:
    text = await asyncio.to_thread(Path(kubeconfig).read_text)
    server = urlsplit(yaml.safe_load(text)["clusters"][0]["cluster"]["server"])
    relay = Relay((str(server.hostname), int(server.port or 443)))
    await relay.up()
    registry, watch = await started(kubectl, namespace, kubeconfig, tmp_path,
                                    env_changes={"KUBERNETES_SERVICE_PORT": str(relay.port)})
    async with running(registry):
        await eventually(lambda: watch.connected, "the watch")
        await relay.down()  # as an API server restart: the stream breaks, new connections are refused
        await eventually(lambda: watch.failures >= 2, "failed reconnects")
        assert not watch.connected
        await asyncio.to_thread(apply_yaml, kubectl, namespace, config_map(agents_text("while down")))
        await asyncio.sleep(0.5)
        assert prompt(registry) == "v1"  # the last good definitions keep serving
        await relay.up()
        await eventually(lambda: prompt(registry) == "while down", "the change made while the API was away")
        assert watch.connected


async def test_an_invalid_definition_is_rejected_with_its_field_path_and_the_old_one_keeps_serving(
        kubectl: Kubectl, namespace: str, kubeconfig: str, tmp_path: Path) -> None:
    registry, watch = await started(kubectl, namespace, kubeconfig, tmp_path)
    async with running(registry):
        await eventually(lambda: watch.connected and watch.lists == 1, "the first list")
        await asyncio.to_thread(apply_yaml, kubectl, namespace,
                                config_map(agents_text("v2", maxTurns="many", colour="blue")))
        await eventually(lambda: "agents.yaml" in registry.errors, "the rejection")
        errors = " ".join(registry.errors["agents.yaml"])
        assert "agents.yaml: agents[0]" in errors and "colour" in errors
        assert prompt(registry) == "v1"
        await asyncio.to_thread(apply_yaml, kubectl, namespace, config_map(agents_text("fixed")))
        await eventually(lambda: prompt(registry) == "fixed", "the corrected definitions")
        assert "agents.yaml" not in registry.errors


def can_i(kubectl: Kubectl, namespace: str, *what: str) -> bool:
    user = f"system:serviceaccount:{namespace}:support-runtime"
    answer = kubectl("auth", "can-i", *what, "-n", namespace, f"--as={user}", check=False).stdout.strip()
    assert answer in ("yes", "no"), answer
    return answer == "yes"


def test_the_runtime_account_reads_its_config_map_and_nothing_else(
        kubectl: Kubectl, namespace: str, kubeconfig: str, tmp_path: Path) -> None:
    apply_yaml(kubectl, namespace, config_map(agents_text("v1")), *operator_rbac(namespace))
    for verb in ("get", "list", "watch"):
        assert can_i(kubectl, namespace, verb, f"configmaps/{CONFIG_MAP}"), verb
    assert not can_i(kubectl, namespace, "get", "configmaps/other-config")
    assert not can_i(kubectl, namespace, "list", "configmaps")  # only by name (fieldSelector)
    for verb in ("create", "update", "patch", "delete"):
        assert not can_i(kubectl, namespace, verb, f"configmaps/{CONFIG_MAP}"), verb
    for what in ("secrets", "pods", "deployments", "agentdeployments.strata.dev"):
        assert not can_i(kubectl, namespace, "get", what), what
    assert not can_i(kubectl, namespace, "patch", "pods")
    assert not can_i(kubectl, "default", "get", f"configmaps/{CONFIG_MAP}")  # this namespace only

    # The API server agrees: a list by name works, a list of every ConfigMap is forbidden.
    env = account(kubectl, namespace, "support-runtime", kubeconfig, tmp_path / "sa")
    base = f"https://{env['KUBERNETES_SERVICE_HOST']}:{env['KUBERNETES_SERVICE_PORT']}/api/v1/namespaces/{namespace}"
    for path, expected in ((f"configmaps?fieldSelector=metadata.name%3D{CONFIG_MAP}", 200), ("configmaps", 403),
                           (f"configmaps/{CONFIG_MAP}", 200), ("secrets", 403)):
        assert _status_of(tmp_path / "sa", f"{base}/{path}") == expected, path


def _status_of(account_dir: Path, url: str) -> int:
    token = (account_dir / "token").read_text().strip()
    context = ssl.create_default_context(cafile=str(account_dir / "ca.crt"))
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, verify=context, trust_env=False,
                         timeout=10)
    if response.status_code == 200:
        assert json.loads(response.text)["kind"] in ("ConfigMapList", "ConfigMap")
    return response.status_code


async def test_a_running_runtime_serves_the_changed_definition_heard_through_the_watch(
        kubectl: Kubectl, namespace: str, kubeconfig: str, tmp_path: Path) -> None:
    """The whole app: GET /api/v1/config/agents answers with the new definition's hash while the
    mounted file still holds the old one."""
    await asyncio.to_thread(apply_yaml, kubectl, namespace, config_map(agents_text("v1")), *operator_rbac(namespace))
    env = await asyncio.to_thread(account, kubectl, namespace, "support-runtime", kubeconfig, tmp_path / "sa")
    target = ConfigMapTarget.from_environment({**env, "STRATA_AGENTS_CONFIGMAP": CONFIG_MAP}, tmp_path / "sa")
    assert target is not None
    mounted = tmp_path / "agents.yaml"
    mounted.write_text(agents_text("v1"))
    config = RuntimeConfig.model_validate({
        "auth": {"mode": "none", "internalTokenEnv": "STRATA_INTERNAL_TOKEN"},
        "stores": {"redis": {"backend": "memory"}, "sql": {"backend": "memory"}, "vectors": {"backend": "memory"}},
        "cache": {"enabled": False}, "memory": {"longTerm": {"enabled": False}},
        "models": [{"name": "demo", "provider": "demo"}],
        "tools": [{"id": "lookup", "name": "lookup", "executor": "http", "target": "http://127.0.0.1:1/x"}],
        "agentManager": {"definitionsPath": str(mounted)},
    })
    app = create_app(config, env={"STRATA_INTERNAL_TOKEN": "tok"})
    registry = app.state.services.conversations.agents.registry
    registry.configmap_watch = ConfigMapWatch(target, registry.apply_data, backoff_seconds=0.1)
    v2 = AgentConfig.model_validate({"id": "helper", "tenant": "globex", **TEMPLATE, "systemPrompt": "v2"})
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rt") as api):
        async def served() -> dict[str, Any]:
            answer = await api.get("/api/v1/config/agents", headers={"x-strata-internal-token": "tok"})
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        assert [a["configHash"] for a in (await served())["agents"]] != [definition_hash(v2)]
        await eventually(lambda: registry.configmap_watch.connected, "the watch")
        await asyncio.to_thread(apply_yaml, kubectl, namespace, config_map(agents_text("v2")))
        status: dict[str, Any] = {}
        for _ in range(400):
            status = await served()
            if [a["configHash"] for a in status["agents"]] == [definition_hash(v2)]:
                break
            await asyncio.sleep(0.05)
        assert [a["configHash"] for a in status["agents"]] == [definition_hash(v2)], status
        assert status["appliedFrom"] == "configMap" and status["configMapWatch"]["connected"]
        assert "v1" in await asyncio.to_thread(mounted.read_text)  # the file never changed
        metrics = (await api.get("/metrics", headers={"x-strata-internal-token": "tok"})).text
        assert "strata_agent_definitions_watch_connected 1.0" in metrics
        assert 'strata_agent_definitions_watch_total{outcome="lists"} 1.0' in metrics
        assert 'strata_agent_definitions_watch_total{outcome="events"}' in metrics
