"""Parsed agent configs shared through real Redis (standalone and Cluster), races, Redis dying mid-reload,
and hot reload of a watched definitions directory inside a running app."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from strata_runtime.agents.guard import ConfigGuard
from strata_runtime.agents.parse_cache import ParseCache, definition_hash
from strata_runtime.agents.registry import AgentRegistry
from strata_runtime.app import create_app
from strata_runtime.config import AgentConfig, RedisStoreConfig, RuntimeConfig
from strata_runtime.stores.redis import RedisConnector
from tests.integration.conftest import _delete_prefixed
from tests.integration.test_cache_behaviour import _free_port, _start_redis

pytestmark = pytest.mark.integration

TEMPLATE: dict[str, Any] = {"model": "demo", "systemPrompt": "You answer questions about invoices.",
                            "skills": [{"name": "invoices", "description": "invoice questions"}]}
INTERNAL = {"x-strata-internal-token": "tok"}


class CountingReviewer:
    def __init__(self, enhancement: str, delay: float = 0.0):
        self.calls = 0
        self.enhancement = enhancement
        self.delay = delay

    async def __call__(self, messages: list[dict[str, str]]) -> str:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return orjson.dumps({"risks": [{"category": "boundary", "reason": "no scope"}],
                             "enhancement": self.enhancement}).decode()


@pytest.fixture(params=["standalone", "cluster"])
async def pods(request: pytest.FixtureRequest, key_prefix: str, redis_url: str, redis_cluster_url: str) -> Any:
    """Two connectors (two 'pods') on the same Redis; the test's keys are deleted afterwards."""
    cluster = request.param == "cluster"
    config = RedisStoreConfig(backend="redis", url=redis_cluster_url if cluster else redis_url, cluster=cluster,
                              key_prefix=key_prefix.rstrip(":"))
    connectors = [RedisConnector(config, {}) for _ in range(2)]
    for c in connectors:
        await c.start()
    yield connectors
    client = connectors[0].client
    if client is not None:
        await _delete_prefixed(client, key_prefix)
    for c in connectors:
        await c.close()


async def test_a_new_pod_adopts_the_persisted_review_instead_of_parsing(pods: list[RedisConnector]) -> None:
    reviewers = [CountingReviewer("from pod A"), CountingReviewer("from pod B")]
    caches = [ParseCache(ConfigGuard(reviewer=r), redis=c, ttl_seconds=600)
              for r, c in zip(reviewers, pods, strict=True)]
    _, first = await caches[0].parse({"id": "bot", "tenant": "acme", **TEMPLATE})
    _, second = await caches[1].parse({"id": "bot", "tenant": "globex", **TEMPLATE})
    assert (reviewers[0].calls, reviewers[1].calls) == (1, 0)
    assert second.from_redis and second.config_hash == first.config_hash
    assert second.guard.enhancement == "from pod A"
    assert [f.code for f in second.guard.findings] == ["llm.boundary"]
    assert caches[1].stats()["redis_hits"] == 1
    client = pods[1].client
    assert client is not None
    key = caches[1]._key(first.config_hash)
    assert key.endswith("{" + first.config_hash + "}")
    assert 0 < await client.ttl(key) <= 600


async def test_two_pods_racing_on_one_hash_agree_on_one_value(pods: list[RedisConnector]) -> None:
    reviewers = [CountingReviewer("A", delay=0.2), CountingReviewer("B", delay=0.2)]
    caches = [ParseCache(ConfigGuard(reviewer=r), redis=c) for r, c in zip(reviewers, pods, strict=True)]
    agent = AgentConfig.model_validate({"id": "bot", "tenant": "acme", **TEMPLATE})
    a, b = await asyncio.gather(caches[0].load(agent), caches[1].load(agent))
    assert reviewers[0].calls == reviewers[1].calls == 1  # both missed at once
    assert a.guard.enhancement == b.guard.enhancement  # the loser adopted the winner's review
    counters = [c.counters for c in caches]
    assert sorted((x.persisted, x.persist_races) for x in counters) == [(0, 1), (1, 0)]


async def test_concurrent_parses_in_one_pod_review_once(pods: list[RedisConnector]) -> None:
    reviewer = CountingReviewer("once", delay=0.1)
    cache = ParseCache(ConfigGuard(reviewer=reviewer), redis=pods[0])
    results = await asyncio.gather(*(cache.parse({"id": f"b{i}", "tenant": "t", **TEMPLATE}) for i in range(20)))
    assert reviewer.calls == 1
    assert len({id(p) for _, p in results}) == 1


def _config(definitions: Path, redis_url: str, **agent_manager: Any) -> RuntimeConfig:
    return RuntimeConfig.model_validate({
        "auth": {"mode": "none", "internalTokenEnv": "STRATA_INTERNAL_TOKEN"},
        "stores": {"redis": {"backend": "auto", "url": redis_url, "keyPrefix": f"cfgreload{os.getpid()}",
                             "recoverIntervalSeconds": 0.2, "socketTimeoutSeconds": 0.5,
                             "connectTimeoutSeconds": 0.5},
                   "sql": {"backend": "memory"}, "vectors": {"backend": "memory"}},
        "cache": {"enabled": False}, "memory": {"longTerm": {"enabled": False}},
        "models": [{"name": "demo", "provider": "demo"}],
        "agents": [{"id": "support", "tenant": "acme", **TEMPLATE}],
        "agentManager": {"definitionsPath": str(definitions), "watchIntervalSeconds": 0.05, **agent_manager},
    })


async def _wait_for(api: httpx.AsyncClient, predicate: Any) -> dict[str, Any]:
    for _ in range(400):
        status = (await api.get("/api/v1/config/agents", headers=INTERNAL)).json()
        if predicate(status):
            return dict(status)
        await asyncio.sleep(0.025)
    raise AssertionError(f"condition never met; last status {status}")


def _served(status: dict[str, Any]) -> dict[str, str]:
    return {f"{a['tenant']}/{a['id']}": a["configHash"] for a in status["agents"]}


async def test_hot_reload_while_redis_dies_keeps_serving(tmp_path: Path) -> None:
    """A running app picks up per-tenant definition files, keeps the last good ones on bad input and on
    Redis dying in the middle, and reports the new hash in query answers."""
    port = _free_port()
    proc = _start_redis(port, tempfile.mkdtemp())
    try:
        definitions = tmp_path / "defs"
        definitions.mkdir()
        config = _config(definitions, f"redis://127.0.0.1:{port}/0")
        app = create_app(config, env={"STRATA_INTERNAL_TOKEN": "tok"})
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://rt") as api:
                stats = (await api.get("/api/v1/config/cache/stats", headers=INTERNAL)).json()
                assert stats["preheated"] == 1 and stats["persisted"] == 1
                assert {"hits", "misses", "parsed_configs", "agents", "evictions", "bytes"} <= set(stats)

                (definitions / "globex.yaml").write_text(orjson.dumps({"agents": [
                    {"id": "helper", "tenant": "globex", **TEMPLATE}]}).decode())
                status = await _wait_for(api, lambda s: "globex/helper" in _served(s))
                served = _served(status)
                assert served["globex/helper"] == served["acme/support"]  # one template, one hash

                proc.kill()
                proc.wait()
                (definitions / "globex.yaml").write_text(orjson.dumps({"agents": [
                    {"id": "helper", "tenant": "globex", **TEMPLATE, "systemPrompt": "v2"}]}).decode())
                status = await _wait_for(api, lambda s: _served(s)["globex/helper"] != served["acme/support"])
                v2 = AgentConfig.model_validate({"id": "x", "tenant": "y", **TEMPLATE, "systemPrompt": "v2"})
                assert _served(status)["globex/helper"] == definition_hash(v2)

                (definitions / "globex.yaml").write_text("agents:\n  - {id: helper, tenant: globex, model: demo, "
                                                         "limits: {maxToolSteps: lots}}\n")
                status = await _wait_for(api, lambda s: "globex.yaml" in s["errors"])
                assert "agents[0].limits.maxToolSteps" in status["errors"]["globex.yaml"][0]
                assert _served(status)["globex/helper"] == definition_hash(v2)  # the last good one

                (definitions / "globex.yaml").unlink()
                status = await _wait_for(api, lambda s: "globex/helper" not in _served(s))
                assert status["errors"] == {}
    finally:
        proc.kill()
        proc.wait()


async def test_a_registry_preheats_from_redis_on_start(pods: list[RedisConnector]) -> None:
    config = RuntimeConfig.model_validate({"auth": {"mode": "none"}, "models": [{"name": "demo", "provider": "demo"}],
                                           "agents": [{"id": f"bot{i}", "tenant": f"t{i}", **TEMPLATE,
                                                       "systemPrompt": f"prompt {i % 3}"} for i in range(9)]})
    first = AgentRegistry(lambda: config, ParseCache(ConfigGuard(), redis=pods[0]))
    await first.start()
    second = AgentRegistry(lambda: config, ParseCache(ConfigGuard(), redis=pods[1]))
    await second.start()
    stats = second.cache.stats()
    assert stats["preheated"] == 9 and stats["parsed_configs"] == 3
    assert stats["redis_hits"] == 3 and stats["persisted"] == 0
    assert first.cache.stats()["persisted"] == 3
