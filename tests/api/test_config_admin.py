"""The config-cache stats, the served agents, and the evolution endpoints through the real app (SQLite)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ACME, GLOBEX, INTERNAL, MakeApi

pytestmark = pytest.mark.api


async def test_config_cache_stats_report_the_parse_cache(api: httpx.AsyncClient) -> None:
    r = await api.get("/api/v1/config/cache/stats", headers=INTERNAL)
    assert r.status_code == 200
    stats = r.json()
    for name in ("hits", "misses", "parsed_configs", "agents", "preheated", "evictions", "bytes"):
        assert isinstance(stats[name], int), name
    assert stats["preheated"] == 1 and stats["parsed_configs"] == 1 and stats["bytes"] > 0
    assert (await api.get("/api/v1/config/cache/stats", headers=ACME)).status_code in (401, 403)
    served = (await api.get("/api/v1/config/agents", headers=INTERNAL)).json()
    assert [(a["tenant"], a["id"]) for a in served["agents"]] == [("acme", "support")]
    assert len(served["agents"][0]["configHash"]) == 32 and served["agents"][0]["guard"]["ok"]
    metrics = (await api.get("/metrics", headers=INTERNAL)).text
    assert f'strata_agent_definitions_info{{definitions_hash="{served["definitionsHash"]}"}} 1.0' in metrics
    assert 'strata_agent_parse_cache_total{outcome="misses"}' in metrics


async def test_guard_enforce_keeps_a_bad_agent_out(make_api: MakeApi) -> None:
    agents = [{"id": "support", "tenant": "acme", "model": "demo"},
              {"id": "leaky", "tenant": "acme", "model": "demo",
               "systemPrompt": "Our key is sk-abcdefghijklmnopqrstuvwxyz0123456789, share it."}]
    async with make_api(agents=agents, agentManager={"guard": "enforce"}) as api:
        served = (await api.get("/api/v1/config/agents", headers=INTERNAL)).json()
        assert [a["id"] for a in served["agents"]] == ["support"]
        assert "secret_in_prompt.openai_api_key" in served["errors"]["config"][0]
        r = await api.post("/api/v1/query", headers=ACME, json={"message": "hi", "session_id": "s1",
                                                                  "chatbot_id": "leaky", "tenant_id": "acme"})
        assert r.status_code == 404


async def test_evolution_endpoints(api: httpx.AsyncClient) -> None:
    name = "acme/support/orders"
    for i in (1, 2):
        r = await api.post("/api/v1/evolution/versions", headers=INTERNAL,
                           json={"kind": "skill", "name": name, "content": {"v": i}, "author": "alice"})
        assert r.status_code == 201 and r.json()["version"] == i
    r = await api.post("/api/v1/evolution/rollback", headers=INTERNAL,
                       json={"kind": "skill", "name": name, "version": 9, "author": "bob"})
    assert r.status_code == 404 and r.json()["error"]["field"] == "version"
    r = await api.post("/api/v1/evolution/rollback", headers=INTERNAL,
                       json={"kind": "skill", "name": name, "version": 1, "author": "bob"})
    assert r.status_code == 200 and r.json()["active"]["content"] == {"v": 1}
    listed = (await api.get("/api/v1/evolution/versions", params={"kind": "skill", "name": name},
                            headers=INTERNAL)).json()
    assert listed["active"] == 1 and len(listed["versions"]) == 2

    r = await api.post("/api/v1/evolution/experiments", headers=INTERNAL, json={
        "name": name, "author": "alice", "arms": [{"label": "a", "version": 1, "weight": 50},
                                                  {"label": "b", "version": 2, "weight": 40}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "arms"
    r = await api.post("/api/v1/evolution/experiments", headers=INTERNAL, json={
        "name": name, "author": "alice", "arms": [{"label": "a", "version": 1, "weight": 50}],
        "colour": "red"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "colour"
    r = await api.post("/api/v1/evolution/experiments", headers=INTERNAL, json={
        "name": name, "author": "alice", "arms": [{"label": "a", "version": 1, "weight": 50},
                                                  {"label": "b", "version": 2, "weight": 50}]})
    assert r.status_code == 201
    exp = r.json()["id"]

    r = await api.post(f"/api/v1/evolution/experiments/{exp}/outcomes", headers=INTERNAL,
                       json={"session_id": "s1", "success": True, "latencyMs": 120.5, "tokens": 42})
    arm = r.json()["arm"]
    assert (await api.get(f"/api/v1/evolution/experiments/{exp}/assign", params={"session_id": "s1"},
                          headers=INTERNAL)).json()["label"] == arm
    r = await api.post("/api/v1/feedback", headers=ACME, json={"experiment_id": exp, "session_id": "s1", "score": 1})
    assert r.status_code == 200 and r.json()["arm"] == arm
    r = await api.post("/api/v1/feedback", headers=GLOBEX, json={"experiment_id": exp, "session_id": "s1",
                                                                 "score": 1})
    assert r.status_code == 404  # another tenant's experiment does not exist for globex
    r = await api.post("/api/v1/feedback", headers=ACME, json={"experiment_id": exp, "session_id": "s1",
                                                               "score": 5})
    assert r.status_code == 422 and r.json()["error"]["field"] == "score"
    results = {x["label"]: x for x in (await api.get(f"/api/v1/evolution/experiments/{exp}",
                                                     headers=INTERNAL)).json()["results"]}
    assert results[arm]["outcomes"] == 1 and results[arm]["feedbackUp"] == 1 and results[arm]["tokens"] == 42
    events = (await api.get("/api/v1/evolution/events", params={"name": name}, headers=INTERNAL)).json()["events"]
    assert [e["action"] for e in events][:2] == ["experiment.started", "rollback"]
    r = await api.get("/api/v1/evolution/events", params={"kind": "widget"}, headers=INTERNAL)
    assert r.status_code in (400, 422) and "error" in r.json()


async def test_a_definition_change_reaches_queries_and_a_started_stream_still_finishes(
        make_api: MakeApi, tmp_path: Path) -> None:
    definitions = tmp_path / "defs"
    definitions.mkdir()
    (definitions / "acme.yaml").write_text("agents:\n  - {id: helper, tenant: acme, model: demo, "
                                           "systemPrompt: version one}\n")
    query = {"message": "hi", "session_id": "s-reload", "chatbot_id": "helper", "tenant_id": "acme"}
    async with make_api(agentManager={"definitionsPath": str(definitions), "watchIntervalSeconds": 600}) as api:
        first = (await api.post("/api/v1/query", headers=ACME, json=query)).json()
        async with api.stream("POST", "/api/v1/query", headers=ACME,
                              json={**query, "session_id": "s-stream", "stream": True}) as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == "id: 1:-1"  # the start event's id (to resume from)
            assert await anext(lines) == "event: start"
            start = await anext(lines)  # its data
            (definitions / "acme.yaml").write_text("agents:\n  - {id: helper, tenant: acme, model: demo, "
                                                   "systemPrompt: version two}\n")
            reloaded = (await api.post("/api/v1/config/reload", headers=INTERNAL)).json()
            assert reloaded["updated"] == ["acme/helper"]
            rest = [line async for line in lines]
        assert any(line.startswith("event: done") for line in rest), rest
        assert first["config_hash"] in "".join([start, *rest])  # the stream kept the hash it started with
        second = (await api.post("/api/v1/query", headers=ACME, json=query)).json()
        assert second["config_hash"] != first["config_hash"]
        r = await api.post("/api/v1/query", headers=ACME, json={**query, "md5_checksum": "0" * 32})
        assert r.status_code == 200 and r.json()["config_hash"] == second["config_hash"]


async def test_the_optional_llm_review_goes_through_the_gateway_once_per_definition(make_api: MakeApi) -> None:
    agents = [{"id": "support", "tenant": "acme", "model": "demo"},
              {"id": "other", "tenant": "globex", "model": "demo"}]
    async with make_api(agents=agents, agentManager={"llmParsing": {"enabled": True, "model": "demo"}}) as api:
        served = (await api.get("/api/v1/config/agents", headers=INTERNAL)).json()
        stats = (await api.get("/api/v1/config/cache/stats", headers=INTERNAL)).json()
    assert stats["llm_reviews"] == 1 and stats["parsed_configs"] == 1  # two tenants, one definition
    guard = served["agents"][0]["guard"]
    # the offline demo model does not answer JSON: reported on the definition, never fatal
    assert guard["ok"] and not guard["llmReviewed"] and guard["llmError"].startswith("JSONDecodeError")
