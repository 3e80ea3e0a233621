"""Chinese questions through the cache with the default local embedder and its fitted verifier: the
same question with other particles or a light word is a semantic hit, one changed number or a real
negation is not."""

from __future__ import annotations

import pytest

from strata_runtime.cache.service import CacheService
from strata_runtime.config import CachePolicySpec, EmbedderConfig
from strata_runtime.embeddings import LocalEmbedder
from strata_runtime.gateway.contract import CallContext
from tests.integration.test_cache_behaviour import Upstream, chat

pytestmark = pytest.mark.integration
ACME = CallContext(tenant="acme")


@pytest.fixture(scope="module")
async def embedder():
    e = LocalEmbedder(model=EmbedderConfig().model, timeout_seconds=60)  # the runtime's default model
    await e.start()
    yield e
    await e.close()


@pytest.fixture
async def upstream(openai_upstream):
    u = Upstream(openai_upstream.base_url)
    yield u
    await u.client.aclose()


@pytest.mark.parametrize(("stored", "asked", "result"), [
    ("蚂蚁的牙齿是什么颜色的？", "蚂蚁的牙齿是什么颜色的啊", "hit_semantic"),  # noqa: RUF001  a particle
    ("上海应用技术学院怎么样？", "请问上海应用技术学院如何", "hit_semantic"),  # noqa: RUF001  courtesy, 如何
    ("四川商务职业学院好不好", "四川商务职业学院好不好呀", "hit_semantic"),  # A-not-A is no negation
    ("七朵玫瑰是什么意思", "九朵玫瑰是什么意思啊", "miss"),  # another number
    ("我的卡被拒绝了吗", "我的卡没有被拒绝吧", "miss"),  # a real negation
])
async def test_chinese_questions_through_the_cache(embedder, upstream, stored: str, asked: str,
                                                   result: str) -> None:
    cache = CacheService(CachePolicySpec.model_validate({"backend": "memory"}), embedder=embedder)

    async def ask(text: str) -> str:
        body = chat(text)
        return (await cache.complete(body, ACME, upstream.compute(body)))[1]

    assert await ask(stored) == "miss"
    assert await ask(asked) == result
