"""Hostile input that only a real Postgres refuses: a NUL character in a string stored in a text column.

SQLite and the memory store take a NUL; Postgres refuses it (invalid byte sequence 0x00), which
was a 500 from every evolution route that stores or looks up a caller's string. The runtime now
refuses a NUL on every backend alike: 422 naming the field, or 404 for an experiment id (no
experiment has one), and nothing is written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ACME, ENV, INTERNAL, api_config, running_api

pytestmark = pytest.mark.integration

NAME = "acme/sweep"


@pytest.fixture
async def api(tmp_path: Path, pg_private_dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    config = api_config(tmp_path, stores={"redis": {"backend": "memory"}, "vectors": {"backend": "memory"},
                                          "sql": {"backend": "postgresql", "dsnEnv": "SWEEP_PG_DSN"}})
    async with running_api(config, {**ENV, "SWEEP_PG_DSN": pg_private_dsn}) as client:
        version = {"kind": "skill", "name": NAME, "content": {"a": 1}, "author": "me"}
        for _ in range(2):
            assert (await client.post("/api/v1/evolution/versions", json=version, headers=INTERNAL)).status_code == 201
        yield client


async def events(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await api.get("/api/v1/evolution/events", params={"name": NAME}, headers=INTERNAL)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["events"]
    return found


@pytest.mark.parametrize(("request_line", "body", "answer"), [
    ("POST /api/v1/evolution/versions", {"kind": "skill", "name": NAME, "content": {}, "author": "a\0b"},
     (422, "author")),
    ("POST /api/v1/evolution/versions", {"kind": "skill", "name": NAME, "content": {}, "author": "me",
                                         "note": "\0"}, (422, "note")),
    ("POST /api/v1/evolution/rollback", {"kind": "skill", "name": NAME, "version": 1, "author": "\0"},
     (422, "author")),
    ("POST /api/v1/evolution/experiments", {"kind": "skill", "name": NAME, "author": "\0",
                                            "arms": [{"label": "a", "version": 1, "weight": 50},
                                                     {"label": "b", "version": 2, "weight": 50}]},
     (422, "author")),
    ("GET /api/v1/evolution/events?name=acme%00sweep", None, (422, "name")),
    ("GET /api/v1/evolution/experiments/e%001", None, (404, "experiment_id")),
    ("POST /api/v1/evolution/experiments/e%001/stop", None, (404, "experiment_id")),
    ("GET /api/v1/evolution/experiments/e%001/assign?session_id=s1", None, (404, "experiment_id")),
    ("POST /api/v1/evolution/experiments/e%001/outcomes", {"session_id": "s1"}, (404, "experiment_id")),
    ("POST /api/v1/feedback", {"experiment_id": "e\0", "session_id": "s1", "score": 1}, (404, "experiment_id")),
])
async def test_a_nul_character_is_a_clear_4xx_on_postgres_and_nothing_is_written(
        api: httpx.AsyncClient, request_line: str, body: dict[str, Any] | None, answer: tuple[int, str]) -> None:
    before = await events(api)
    method, path = request_line.split(" ")
    response = await api.request(method, path, json=body, headers={**ACME, **INTERNAL})
    assert (response.status_code, response.json()["error"]["field"]) == answer, response.text
    assert await events(api) == before


async def test_a_nul_in_an_outcome_session_or_stop_author_is_a_422(api: httpx.AsyncClient) -> None:
    arms = [{"label": "a", "version": 1, "weight": 50}, {"label": "b", "version": 2, "weight": 50}]
    created = await api.post("/api/v1/evolution/experiments", headers=INTERNAL,
                             json={"kind": "skill", "name": NAME, "arms": arms, "author": "me"})
    assert created.status_code == 201, created.text
    experiment = created.json()["id"]
    before = await events(api)

    outcome = await api.post(f"/api/v1/evolution/experiments/{experiment}/outcomes", headers=INTERNAL,
                             json={"session_id": "s\0", "success": True})
    assert outcome.status_code == 422 and outcome.json()["error"]["field"] == "session_id", outcome.text
    stop = await api.post(f"/api/v1/evolution/experiments/{experiment}/stop", params={"author": "\0"},
                          headers=INTERNAL)
    assert stop.status_code == 422 and stop.json()["error"]["field"] == "author", stop.text

    results = await api.get(f"/api/v1/evolution/experiments/{experiment}", headers=INTERNAL)
    assert results.json()["status"] == "running"
    assert all(arm["outcomes"] == 0 for arm in results.json()["results"])
    assert await events(api) == before
