"""`/internal/route` and `/api/v1/query` route with the runtime's default (bundled) embedder: L0 rules,
L1.5 skills in English and Chinese, the decision in the answer, and bad input as clear 4xx JSON."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import ACME, INTERNAL, MakeApi

pytestmark = pytest.mark.api

SKILLS = [
    {"name": "writer", "description": "Writes articles and blog posts",
     "examples": ["write an article about AI", "draft a blog post about electric cars", "生成一篇关于AI的文章",
                  "写一篇关于旅游的博客"],
     "instructions": "Write in a friendly tone."},
    {"name": "weather", "description": "Weather forecasts",
     "examples": ["what is the weather tomorrow", "will it rain in Paris today", "明天天气怎么样", "北京会下雪吗"]},
    {"name": "silent"},  # no text: never semantically routed
]
ROUTING = {
    "rules": [{"keywords": ["hello", "你好"], "route": "direct"},
              {"pattern": ".*\\bpassword\\b.*", "route": "reject"}],
    "heuristic": {"enabled": False},  # short test messages would otherwise go to chat at L1
    "semantic": {"low": 0.8, "high": 0.9, "timeoutSeconds": 30},  # a busy test box: no deadline skip
    "classifier": {"enabled": False},
}


def overrides() -> dict[str, Any]:
    return {"agents": [{"id": "support", "tenant": "acme", "model": "demo", "skills": SKILLS}], "routing": ROUTING}


async def route(api: Any, message: str) -> dict[str, Any]:
    response = await api.post("/internal/route", json={"tenant_id": "acme", "agent_id": "support",
                                                       "message": message}, headers=INTERNAL)
    assert response.status_code == 200, response.text
    decision: dict[str, Any] = response.json()
    return decision


async def test_rules_then_skills_in_english_and_chinese(make_api: MakeApi) -> None:
    async with make_api(**overrides()) as api:
        assert (await route(api, "Hello!"))["layer"] == "L0"
        rejected = await route(api, "tell me the admin password now")
        assert (rejected["route"], rejected["layer"]) == ("reject", "L0")
        for message, skill in [("生成一篇关于AI的文章", "writer"), ("please write an article about robots", "writer"),
                               ("后天上海天气怎么样", "weather"), ("is it going to rain tomorrow", "weather")]:
            decision = await route(api, message)
            assert decision["candidates"][0]["skill"] == skill, (message, decision)
            assert (decision["route"], decision["layer"], decision["skill"]) == ("skill", "L1.5", skill), decision
            assert decision["confidence"] > decision["thresholds"]["high"] == 0.9
            assert "silent" not in [c["skill"] for c in decision["candidates"]]


ENGLISH_ONLY = [
    {"name": "writer", "description": "Writes articles and blog posts",
     "examples": ["write an article about AI", "draft a blog post about electric cars"]},
    {"name": "weather", "description": "Weather forecasts",
     "examples": ["what is the weather tomorrow", "will it rain in Paris today"]},
    {"name": "billing", "description": "Invoices, refunds and payments",
     "examples": ["I was charged twice", "where is my refund"]},
]


async def test_skills_written_in_english_are_found_by_queries_in_chinese_with_the_composite_embedder(
        make_api: MakeApi) -> None:
    """The composite embedder keeps languages apart (bge for English, e5 for the rest, cosine 0
    across): the skills' English texts also get an e5 row, so a Chinese query finds them."""
    composite = {"provider": "local", "model": "bge-small-en-v1.5+multilingual-e5-small", "timeoutSeconds": 30}
    agents = [{"id": "support", "tenant": "acme", "model": "demo", "skills": ENGLISH_ONLY}]
    async with make_api(agents=agents, routing=ROUTING, embedder=composite) as api:
        for message, skill in [("生成一篇关于AI的文章", "writer"), ("后天上海天气怎么样", "weather"),
                               ("我被重复扣款了请退款", "billing"),
                               ("please write an article about robots", "writer"),
                               ("is it going to rain tomorrow", "weather")]:
            decision = await route(api, message)
            assert decision["candidates"][0]["skill"] == skill, (message, decision)


async def test_the_query_answer_carries_the_decision(make_api: MakeApi) -> None:
    async with make_api(**overrides()) as api:
        response = await api.post("/api/v1/query", json={"session_id": "s-routing-1", "chatbot_id": "support",
                                                          "message": "写一篇关于机器学习的文章"}, headers=ACME)
        assert response.status_code == 200, response.text
        routing = response.json()["routing"]
        assert (routing["route"], routing["layer"], routing["skill"]) == ("skill", "L1.5", "writer")


@pytest.mark.parametrize("message", ["", "x" * 100_000])
async def test_empty_and_oversized_messages_are_clear_4xx(make_api: MakeApi, message: str) -> None:
    async with make_api(**overrides()) as api:
        response = await api.post("/internal/route", json={"tenant_id": "acme", "agent_id": "support",
                                                           "message": message}, headers=INTERNAL)
        assert 400 <= response.status_code < 500
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"]["code"]
