"""One suite, three backends: the evolution store on Postgres (a private schema), SQLite (a file) and memory."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from strata_runtime.errors import NotFound, ValidationFailed
from strata_runtime.evolution import Arm, EvolutionStore, MemoryEvolutionStore, SqlEvolutionStore, assign_arm
from strata_runtime.stores.sql import PostgresDatabase, SqliteDatabase

pytestmark = pytest.mark.integration

NAME = "acme/support/orders"


@pytest.fixture(params=["postgres", "sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, postgres_dsn: str,
                pg_schema: str) -> AsyncIterator[EvolutionStore]:
    if request.param == "memory":
        yield MemoryEvolutionStore()
        return
    if request.param == "sqlite":
        db = await SqliteDatabase.open(str(tmp_path / "evolution.db"))
        sqlite_store = SqlEvolutionStore(db)
        await sqlite_store.migrate()
        yield sqlite_store
        await db.close()
        return
    admin = await asyncpg.connect(postgres_dsn, timeout=10)
    await admin.execute(f'CREATE SCHEMA "{pg_schema}"')
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4,
                                     server_settings={"search_path": pg_schema})
    try:
        pg_store = SqlEvolutionStore(PostgresDatabase(pool))
        await pg_store.migrate()
        yield pg_store
    finally:
        await pool.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}" CASCADE')
        await admin.close()


async def test_versions_are_numbered_and_the_newest_is_active(store: EvolutionStore) -> None:
    v1 = await store.add_version("skill", NAME, {"instructions": "v1"}, author="alice", note="first")
    v2 = await store.add_version("skill", NAME, {"instructions": "v2"}, author="bob")
    assert (v1.version, v2.version) == (1, 2)
    assert [v.content for v in await store.versions("skill", NAME)] == [{"instructions": "v1"}, {"instructions": "v2"}]
    active = await store.active("skill", NAME)
    assert active is not None and active.version == 2 and active.author == "bob"
    assert await store.active("skill", "acme/support/other") is None
    assert await store.versions("config", NAME) == []  # kinds are separate


async def test_events_say_who_did_what_and_when_newest_first(store: EvolutionStore) -> None:
    await store.add_version("config", "acme/support", {"systemPrompt": "a"}, author="alice")
    await store.add_version("config", "acme/support", {"systemPrompt": "b"}, author="bob")
    await store.add_version("config", "globex/bot", {"systemPrompt": "c"}, author="carol")
    await store.rollback("config", "acme/support", 1, author="dave")
    events = await store.events(kind="config", name="acme/support")
    assert [(e.action, e.version, e.author) for e in events] == [
        ("rollback", 1, "dave"), ("version.added", 2, "bob"), ("version.added", 1, "alice")]
    assert events[0].detail == {"from": 2}
    assert events[0].at >= events[-1].at > 0
    assert len(await store.events()) == 4
    assert len(await store.events(limit=1)) == 1


async def test_rollback_to_a_missing_version_is_404_and_changes_nothing(store: EvolutionStore) -> None:
    await store.add_version("skill", NAME, {"v": 1}, author="a")
    await store.add_version("skill", NAME, {"v": 2}, author="a")
    with pytest.raises(NotFound) as missing:
        await store.rollback("skill", NAME, 7, author="a")
    assert missing.value.field == "version"
    active = await store.active("skill", NAME)
    assert active is not None and active.version == 2
    assert [e.action for e in await store.events(name=NAME)] == ["version.added", "version.added"]
    rolled = await store.rollback("skill", NAME, 1, author="a")
    assert rolled.content == {"v": 1}
    active = await store.active("skill", NAME)
    assert active is not None and active.version == 1


async def test_concurrent_writers_get_distinct_version_numbers(store: EvolutionStore) -> None:
    made = await asyncio.gather(*(store.add_version("skill", NAME, {"i": i}, author="w") for i in range(8)))
    assert sorted(v.version for v in made) == list(range(1, 9))


@pytest.mark.parametrize(("weights", "field"), [((50, 40), "arms"), ((60, 60), "arms"), ((100,), "arms"),
                                                ((101, -1), "arms[0].weight")])
async def test_a_split_that_does_not_sum_to_100_is_rejected(store: EvolutionStore, weights: tuple[int, ...],
                                                            field: str) -> None:
    await store.add_version("skill", NAME, {"v": 1}, author="a")
    await store.add_version("skill", NAME, {"v": 2}, author="a")
    arms = [Arm(f"arm{i}", i % 2 + 1, w) for i, w in enumerate(weights)]
    with pytest.raises(ValidationFailed) as bad:
        await store.create_experiment("skill", NAME, arms, author="a")
    assert bad.value.field == field
    assert [e.action for e in await store.events(name=NAME)] == ["version.added", "version.added"]


async def test_an_arm_naming_a_missing_version_is_404(store: EvolutionStore) -> None:
    await store.add_version("skill", NAME, {"v": 1}, author="a")
    with pytest.raises(NotFound) as missing:
        await store.create_experiment("skill", NAME, [Arm("a", 1, 50), Arm("b", 3, 50)], author="a")
    assert missing.value.field == "arms[1].version"


async def test_ab_split_is_stable_per_session_and_outcomes_aggregate_per_arm(store: EvolutionStore) -> None:
    await store.add_version("skill", NAME, {"v": 1}, author="a")
    await store.add_version("skill", NAME, {"v": 2}, author="a")
    experiment = await store.create_experiment("skill", NAME, [Arm("control", 1, 70), Arm("candidate", 2, 30)],
                                               author="alice")
    again = await store.experiment(experiment.id)
    assert again.arms == experiment.arms and again.status == "running"

    sessions = [f"session-{i}" for i in range(400)]
    arms = {s: (await store.assign(experiment.id, s)).label for s in sessions}
    again_arms = [(await store.assign(experiment.id, s)).label for s in sessions[:20]]
    assert again_arms == [arms[s] for s in sessions[:20]]
    share = collections.Counter(arms.values())["control"] / len(sessions)
    assert 0.6 < share < 0.8  # 70/30 by hash

    expected: dict[str, list[int]] = {"control": [0, 0, 0, 0], "candidate": [0, 0, 0, 0]}
    for i, session in enumerate(sessions[:60]):
        success = i % 3 != 0
        arm = await store.record_outcome(experiment.id, session, success=success, latency_ms=100.0 + i, tokens=10)
        assert arm.label == arms[session]
        row = expected[arm.label]
        row[0] += 1
        row[1] += int(success)
        if i % 5 == 0:
            await store.record_outcome(experiment.id, session, feedback=1 if success else -1)
            row[2 if success else 3] += 1
    results = {r.label: r for r in await store.results(experiment.id)}
    for label, (outcomes, successes, up, down) in expected.items():
        r = results[label]
        assert (r.outcomes, r.successes, r.feedback_up, r.feedback_down) == (outcomes, successes, up, down)
        assert r.tokens == outcomes * 10
        assert r.to_json()["successRate"] == round(successes / outcomes, 4)
    assert results["control"].version == 1 and results["candidate"].version == 2

    stopped = await store.stop_experiment(experiment.id, author="alice")
    assert stopped.status == "stopped"
    assert [e.action for e in await store.events(name=NAME, limit=2)] == ["experiment.stopped", "experiment.started"]


async def test_bad_outcomes_and_unknown_experiments(store: EvolutionStore) -> None:
    with pytest.raises(NotFound):
        await store.results("nope")
    with pytest.raises(NotFound):
        await store.record_outcome("nope", "s", success=True)
    await store.add_version("skill", NAME, {"v": 1}, author="a")
    experiment = await store.create_experiment("skill", NAME, [Arm("a", 1, 50), Arm("b", 1, 50)], author="a")
    with pytest.raises(ValidationFailed) as bad:
        await store.record_outcome(experiment.id, "s", feedback=5)
    assert bad.value.field == "feedback"
    with pytest.raises(ValidationFailed):
        await store.record_outcome(experiment.id, "s", latency_ms=-1)
    with pytest.raises(ValidationFailed) as bad:
        await store.add_version("widget", NAME, {}, author="a")
    assert bad.value.field == "kind"
    assert all(r.outcomes == 0 for r in await store.results(experiment.id))


def test_assignment_is_a_pure_function_of_experiment_and_session() -> None:
    arms = (Arm("a", 1, 50), Arm("b", 2, 50))
    assert assign_arm("exp", "s1", arms) == assign_arm("exp", "s1", arms)
    assert assign_arm("exp", "s", (Arm("a", 1, 0), Arm("b", 2, 100))).label == "b"


async def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    db = await SqliteDatabase.open(str(tmp_path / "m.db"))
    try:
        first = SqlEvolutionStore(db)
        await first.migrate()
        await first.add_version("skill", NAME, {"v": 1}, author="a")
        await SqlEvolutionStore(db).migrate()  # a second pod / a restart
        assert await first.schema_version() == 2
        assert len(await first.versions("skill", NAME)) == 1
    finally:
        await db.close()
