"""Two pods on one Redis cache with different local embedders (a rolling change of model): they
share the stored answers (exact hits), never the vectors, so each keeps its semantic hits."""

from __future__ import annotations

import os
import time

import pytest

from strata_runtime.cache.service import CacheService
from strata_runtime.config import CachePolicySpec, RedisStoreConfig
from strata_runtime.embeddings import LocalEmbedder
from strata_runtime.gateway.contract import CallContext
from strata_runtime.stores.redis import RedisConnector
from tests.integration.test_cache_behaviour import Upstream, chat

pytestmark = pytest.mark.integration
ACME = CallContext(tenant="acme")


@pytest.fixture
async def upstream(openai_upstream):
    u = Upstream(openai_upstream.base_url)
    yield u
    await u.client.aclose()


async def test_pods_on_e5_and_on_the_composite_share_answers_but_not_vectors(upstream, openai_upstream) -> None:
    url = os.environ.get("STRATA_TEST_REDIS_URL")
    if not url:
        pytest.fail('STRATA_TEST_REDIS_URL not set (run: eval "$(bash hack/services.sh env)")')
    prefix = f"spaces{os.getpid()}{int(time.time() * 1000) % 100000}"
    config = RedisStoreConfig(backend="redis", url=url, key_prefix=prefix)
    embedders = [LocalEmbedder(model="multilingual-e5-small", timeout_seconds=30),
                 LocalEmbedder(model="bge-small-en-v1.5+multilingual-e5-small", timeout_seconds=30)]
    pods = [RedisConnector(config, os.environ) for _ in embedders]
    policy = CachePolicySpec.model_validate({"backend": "redis", "semantic": {"threshold": 0.8}})
    for connector in pods:
        await connector.start()
    old, new = (CacheService(policy, redis=c, embedder=e) for c, e in zip(pods, embedders, strict=True))

    async def ask(cache: CacheService, text: str) -> str:
        body = chat(text)
        return (await cache.complete(body, ACME, upstream.compute(body)))[1]

    try:
        assert await ask(old, "How do I reset my password?") == "miss"
        assert await ask(new, "How do I reset my password?") == "hit_exact"  # the answers are shared
        # The old pod's 384-dimension vector is not loaded into the new pod's index (before the vector
        # spaces, it was, and the new pod's 768-dimension store then failed): a miss, stored...
        assert await ask(new, "How can I reset my password?") == "miss"
        # ...whose own vectors serve a rewording (here one the fitted verifier serves without scoring:
        # the same words in the same order).
        assert await ask(new, "how can i reset my password") == "hit_semantic"
        assert (await new.snapshot())["hits"]["semantic"] == 1
    finally:
        for connector in pods:
            await connector.close()
        for embedder in embedders:
            await embedder.close()
