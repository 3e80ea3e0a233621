"""The in-process vector index agrees with brute force and honours filters, upserts and deletes."""

from __future__ import annotations

import tracemalloc
from collections.abc import Awaitable

import numpy as np

from strata_runtime.stores.vectors import MemoryVectorIndex, VectorRow


async def test_search_returns_the_same_top_k_as_brute_force_within_the_filter() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    index = MemoryVectorIndex()
    await index.upsert("c", [VectorRow(f"r{i}", vectors[i], {"tenant": f"t{i % 3}"}) for i in range(500)])
    query = rng.normal(size=16).astype(np.float32)
    hits = await index.search("c", query, where={"tenant": "t1"}, limit=5)

    normalised = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = normalised @ (query / np.linalg.norm(query))
    in_tenant = [i for i in range(500) if i % 3 == 1]
    expected = sorted(in_tenant, key=lambda i: -scores[i])[:5]
    assert [h.id for h in hits] == [f"r{i}" for i in expected]
    assert all(h.fields["tenant"] == "t1" for h in hits)
    assert np.isclose(hits[0].score, scores[expected[0]], atol=1e-5)


async def test_upserting_an_id_again_replaces_its_vector_and_fields() -> None:
    index = MemoryVectorIndex()
    await index.upsert("c", [VectorRow("a", [1, 0], {"tenant": "x"})])
    await index.upsert("c", [VectorRow("a", [0, 1], {"tenant": "y"})])
    assert await index.count("c", where={}) == 1
    assert await index.count("c", where={"tenant": "x"}) == 0
    hits = await index.search("c", [0, 1], where={"tenant": "y"}, limit=3)
    assert [(h.id, round(h.score, 4)) for h in hits] == [("a", 1.0)]


async def test_delete_removes_only_the_matching_rows_and_they_stay_gone() -> None:
    index = MemoryVectorIndex()
    rows = [VectorRow(str(i), [1, i], {"tenant": "a" if i < 3 else "b", "agent": "q"}) for i in range(6)]
    await index.upsert("c", rows)
    await index.delete("c", where={"tenant": "a", "agent": "q"})
    assert await index.count("c", where={"agent": "q"}) == 3
    assert await index.search("c", [1, 0], where={"tenant": "a"}, limit=5) == []
    await index.upsert("c", rows[:1])
    assert await index.count("c", where={"tenant": "a"}) == 1


async def test_growing_past_the_initial_capacity_keeps_every_row() -> None:
    index = MemoryVectorIndex()
    await index.upsert("c", [VectorRow(str(i), [1.0, float(i)], {}) for i in range(300)])
    assert await index.count("c", where={}) == 300
    assert len(await index.search("c", [0, 1], where={}, limit=500)) == 300


async def test_the_index_keeps_at_most_max_rows_dropping_the_least_recently_written() -> None:
    index = MemoryVectorIndex(max_rows=100)
    await index.upsert("c", [VectorRow(f"r{i}", [1.0, float(i)], {"tenant": "t"}) for i in range(100)])
    await index.upsert("c", [VectorRow("r0", [1.0, 0.0], {"tenant": "t"})])  # written again: now the newest
    await index.upsert("c", [VectorRow(f"r{i}", [1.0, float(i)], {"tenant": "t"}) for i in range(100, 250)])
    assert await index.count("c", where={"tenant": "t"}) == 100
    kept = {h.id for h in await index.search("c", [0, 1], where={}, limit=1000)}
    assert kept == {f"r{i}" for i in range(150, 250)}
    await index.upsert("c", [VectorRow("r0", [1.0, 0.0], {"tenant": "t"})])
    assert {h.id for h in await index.search("c", [1, 0], where={"tenant": "t"}, limit=1)} == {"r0"}
    assert await index.count("c", where={}) == 100



async def _churn(index: MemoryVectorIndex, first: int, last: int) -> None:
    """Rounds of 200 rows with fields of their own (a ~3 KB content, like archived summaries), each
    round deleted after it was written."""
    for r in range(first, last):
        await index.upsert("c", [VectorRow(f"{r}-{i}", [1.0, float(i)],
                                           {"tenant": "t", "session": f"s{r}", "content": f"{r}-{i} " * 500})
                                 for i in range(200)])
        await index.delete("c", where={"session": f"s{r}"})


async def _write(index: MemoryVectorIndex, first: int, last: int) -> None:
    for i in range(first, last):
        await index.upsert("c", [VectorRow(f"r{i}", [1.0, float(i)], {"tenant": "t", "content": f"{i} " * 1000})])


async def _growth(write: Awaitable[None], warm_up: Awaitable[None]) -> int:
    tracemalloc.start()
    try:
        await warm_up
        before = tracemalloc.get_traced_memory()[0]
        await write
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


async def test_deleted_rows_give_their_memory_back() -> None:
    index = MemoryVectorIndex()
    grown = await _growth(_churn(index, 2, 40), warm_up=_churn(index, 0, 2))
    assert await index.count("c", where={}) == 0
    assert grown < 1_000_000  # 7,600 rows of ~3 KB went through


async def test_rows_pushed_out_by_the_bound_give_their_memory_back() -> None:
    index = MemoryVectorIndex(max_rows=200)
    grown = await _growth(_write(index, 400, 8_000), warm_up=_write(index, 0, 400))
    assert await index.count("c", where={}) == 200
    assert grown < 1_000_000  # 7,600 rows of ~5 KB went through
