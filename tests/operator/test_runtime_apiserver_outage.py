"""Drill: the runtime's watch of its agent-definitions ConfigMap while the API server goes away.

The whole app runs in process (create_app, httpx ASGITransport), its ConfigMap watch reaching the
real API server through a relay (tests/support/api_relay.py) that a drill cuts, refuses, and
black-holes (a hung API server: connections accepted, never answered; the open ones stay silent
for good, as half-open connections). Meanwhile the ConfigMap is changed through the real API
server directly. Throughout, the runtime must keep answering for its agents with the last good
definition (no 5xx); once the API server is back it must serve the new one. Bounds are hang
guards; the figures are printed (pytest -s).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from strata_runtime.agents.configmap_watch import ConfigMapTarget, ConfigMapWatch
from strata_runtime.agents.parse_cache import definition_hash
from strata_runtime.app import create_app
from strata_runtime.config import AgentConfig, RuntimeConfig
from tests.operator.fixtures_operator import Kubectl, apply_yaml
from tests.operator.test_runtime_configmap_watch import CONFIG_MAP, agents_text, config_map, eventually, operator_rbac
from tests.operator.test_runtime_pod_annotation import account
from tests.support.api_relay import ApiRelay, upstream_of
from tests.unit.test_parse_cache import TEMPLATE

pytestmark = pytest.mark.operator

WATCH_SECONDS = 15
"""The watch's timeoutSeconds here: it takes a stream silent for 15 + 15 s for dead (production: 300, 75 s)."""
HANG_SECONDS = 35.0
"""Longer than every client timeout of the watch: 30 s of silence, 5 s to connect (TLS handshake included)."""
BOUND = 45.0
INTERNAL = {"x-strata-internal-token": "tok"}


def definition(prompt: str) -> str:
    return definition_hash(AgentConfig.model_validate({"id": "helper", "tenant": "globex", **TEMPLATE,
                                                       "systemPrompt": prompt}))


class Traffic:
    """Asks the runtime, again and again, to answer as the agent and to list its definitions."""

    def __init__(self, api: httpx.AsyncClient):
        self.api = api
        self.statuses: dict[int, int] = {}
        self.served: set[str] = set()
        self.turns = 0

    async def once(self) -> str:
        answer = await self.api.post("/api/v1/query", json={"message": "where is my order?", "session_id":
                                                            f"s{self.turns}", "chatbot_id": "helper",
                                                            "tenant_id": "globex"})
        self.turns += 1
        self.statuses[answer.status_code] = self.statuses.get(answer.status_code, 0) + 1
        assert answer.status_code < 500, answer.text
        listed = await self.api.get("/api/v1/config/agents", headers=INTERNAL)
        self.statuses[listed.status_code] = self.statuses.get(listed.status_code, 0) + 1
        assert listed.status_code == 200, listed.text
        [served] = [a["configHash"] for a in listed.json()["agents"]]
        self.served.add(served)
        return str(served)

    async def for_seconds(self, seconds: float) -> set[str]:
        """Keep asking for `seconds`; the definition hashes served meanwhile."""
        self.served = set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await self.once()
            await asyncio.sleep(0.2)
        return self.served

    async def until_served(self, expected: str) -> float:
        start = time.monotonic()
        while await self.once() != expected:
            if time.monotonic() - start > BOUND:
                raise AssertionError(f"the new definition was not served {BOUND:.0f}s after the API server came back")
            await asyncio.sleep(0.1)
        return time.monotonic() - start


async def test_the_runtime_serves_the_last_good_definition_through_an_outage_and_the_new_one_after(
        kubectl: Kubectl, namespace: str, kubeconfig: str, tmp_path: Path) -> None:
    await asyncio.to_thread(apply_yaml, kubectl, namespace, config_map(agents_text("v1")), *operator_rbac(namespace))
    env = await asyncio.to_thread(account, kubectl, namespace, "support-runtime", kubeconfig, tmp_path / "sa")
    relay = await asyncio.to_thread(ApiRelay(upstream_of(kubeconfig)).start)
    try:
        env |= {"STRATA_AGENTS_CONFIGMAP": CONFIG_MAP, "KUBERNETES_SERVICE_PORT": str(relay.port)}
        target = ConfigMapTarget.from_environment(env, tmp_path / "sa")
        assert target is not None and f":{relay.port}" in target.server
        mounted = tmp_path / "agents.yaml"
        mounted.write_text(agents_text("v1"))  # the kubelet's copy, never refreshed here
        config = RuntimeConfig.model_validate({
            "auth": {"mode": "none", "internalTokenEnv": "STRATA_INTERNAL_TOKEN"},
            "stores": {"redis": {"backend": "memory"}, "sql": {"backend": "memory"},
                       "vectors": {"backend": "memory"}},
            "cache": {"enabled": False}, "memory": {"longTerm": {"enabled": False}},
            "models": [{"name": "demo", "provider": "demo"}],
            "tools": [{"id": "lookup", "name": "lookup", "executor": "http", "target": "http://127.0.0.1:1/x"}],
            "agentManager": {"definitionsPath": str(mounted)},
        })
        app = create_app(config, env={"STRATA_INTERNAL_TOKEN": "tok"})
        registry = app.state.services.conversations.agents.registry
        watch = ConfigMapWatch(target, registry.apply_data, backoff_seconds=0.2, max_backoff_seconds=2.0,
                               watch_seconds=WATCH_SECONDS)
        registry.configmap_watch = watch
        async with (app.router.lifespan_context(app),
                    httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rt") as api):
            traffic = Traffic(api)
            await eventually(lambda: watch.connected and watch.lists == 1, "the first list")
            assert await traffic.once() == definition("v1")
            figures: list[str] = []

            # 1. Every connection reset, new ones refused for ~10 s.
            failures = watch.failures
            cut = await asyncio.to_thread(relay.cut)
            await asyncio.to_thread(relay.refuse)
            await asyncio.to_thread(apply_yaml, kubectl, namespace, config_map(agents_text("while refused")))
            assert await traffic.for_seconds(10) == {definition("v1")}  # the last good one, no 5xx
            assert watch.failures > failures and not watch.connected
            await asyncio.to_thread(relay.resume)
            took = await traffic.until_served(definition("while refused"))
            figures.append(f"cut {cut} connection(s), refused 10 s: new definition served {took:.2f}s after resume")

            # 2. Hung: black-holed for longer than the watch's idle timeout (and every other client timeout).
            await eventually(lambda: watch.connected, "the watch again")
            failures, hung = watch.failures, time.monotonic()
            await asyncio.to_thread(relay.blackhole)
            await asyncio.to_thread(apply_yaml, kubectl, namespace, config_map(agents_text("while hung")))
            assert await traffic.for_seconds(HANG_SECONDS) == {definition("while refused")}
            # It noticed the silence by itself (no error, no close ever came) and is trying again.
            assert watch.failures > failures and not watch.connected, watch.status()
            await asyncio.to_thread(relay.resume)
            took = await traffic.until_served(definition("while hung"))
            figures.append(f"hung {time.monotonic() - hung - took:.0f}s: new definition served {took:.2f}s after "
                           f"resume")
            figures.append(f"{traffic.turns} turns, statuses {traffic.statuses}, watch {watch.status()}, "
                           f"relay {relay.stats()}")
            print("\n" + "\n".join(figures))
            assert registry.applied_from == "configMap"
            assert "v1" in await asyncio.to_thread(mounted.read_text)  # the file never changed
    finally:
        await asyncio.to_thread(relay.close)
