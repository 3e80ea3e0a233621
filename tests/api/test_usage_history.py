"""`/api/v1/usage` of the embedded runtime (`make run`: no Redis, SQLite): usage outlives a restart."""

from __future__ import annotations

from pathlib import Path

from tests.api.conftest import ACME, GLOBEX, INTERNAL, api_config, running_api

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}


async def test_usage_of_a_runtime_without_redis_survives_its_restart_and_stays_per_tenant(tmp_path: Path) -> None:
    config = api_config(tmp_path)
    async with running_api(config) as api:
        for _ in range(3):
            assert (await api.post("/v1/chat/completions", json=CHAT, headers=ACME)).status_code == 200
        assert (await api.post("/v1/chat/completions", json=CHAT, headers=GLOBEX)).status_code == 200
        before = (await api.get("/api/v1/usage", headers=ACME)).json()
        assert before["totals"]["requests"] == 3
    # stopped (final roll-up into the SQLite file) and started again: a new process, an empty memory
    async with running_api(config) as api:
        after = await api.get("/api/v1/usage", headers=ACME)
        assert after.status_code == 200, after.text
        assert after.json() == before
        assert (await api.post("/v1/chat/completions", json=CHAT, headers=ACME)).status_code == 200
        assert (await api.get("/api/v1/usage", headers=ACME)).json()["totals"]["requests"] == 4
        globex = (await api.get("/api/v1/usage", headers=GLOBEX)).json()
        assert globex["totals"]["requests"] == 1
        assert {item["tenant"] for item in globex["items"]} == {"globex"}
        assert (await api.get("/api/v1/usage", params={"tenant": "acme"}, headers=GLOBEX)).status_code == 403
        everyone = (await api.get("/api/v1/usage", params={"groupBy": "tenant"}, headers=INTERNAL)).json()
        assert {item["tenant"]: item["requests"] for item in everyone["items"]} == {"acme": 4, "globex": 1}
