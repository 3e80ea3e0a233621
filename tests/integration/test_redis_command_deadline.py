"""A hung Redis (SIGSTOP) under commands, standalone and a Cluster master: every command and pipeline
ends within `stores.redis.commandTimeoutSeconds`, whatever the client does inside it.

Without the deadline a command waits out each attempt's socket timeout, and a Cluster client
retries after refreshing its topology from every node (each up to the connect and socket
timeouts): with the socket timeout longer than the deadline, as here, calls took 6.0 s (two
attempts) on both, where the deadline is 1.5 s. With it:

* no command, pipeline or script call outlives the deadline by more than a generous margin (the
  margin only absorbs scheduling on a loaded machine; it is far below what the client alone takes);
* a failed call of a component that holds session state (the tool ledger) is StoreUnavailable
  with Retry-After (503 `store_unavailable`), and a raw client call fails with a Redis error
  (`is_redis_failure`), never anything a caller would turn into a 500;
* every acknowledged write is stored;
* a cancelled command leaves nothing behind: after the stall, every reply read is the reply to
  its own command (a connection reused with the previous command's reply unread would hand it to
  the next one), and no pooled connection stays counted as in use.

On Redis processes of its own (tests/support/stores.py), never the shared ones.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.asyncio import BlockingConnectionPool

from strata_runtime.config import RedisStoreConfig
from strata_runtime.stores.health import StoreUnavailable
from strata_runtime.stores.redis import CommandDeadlineExceeded, RedisConnector, is_redis_failure
from strata_runtime.tools.ledger import ToolLedger
from tests.support.stores import RedisCluster, RedisServer

DEADLINE_SECONDS = 1.5
SOCKET_TIMEOUT_SECONDS = 3.0  # longer than the deadline: one attempt alone outlives it
MARGIN_SECONDS = 3.0  # scheduling on a busy 2-core box; without the deadline calls took 6.0 s
STALL_SECONDS = 8.0
CALLERS = 6


@dataclass
class Target:
    url: str
    cluster: bool
    victim: RedisServer
    wait_healthy: Callable[[], None] | None = None


@pytest.fixture(params=["standalone", "cluster"])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    if request.param == "standalone":
        server = await asyncio.to_thread(RedisServer(tmp_path).start)
        try:
            yield Target(server.url, False, server)
        finally:
            server.stop()
        return
    cluster = await asyncio.to_thread(RedisCluster(tmp_path).start)
    try:
        yield Target(cluster.url, True, cluster.nodes[1], cluster.wait_healthy)
    finally:
        for node in cluster.nodes:
            node.resume()
        cluster.stop()


@dataclass
class Calls:
    outcomes: Counter[str] = field(default_factory=Counter)
    durations: list[tuple[float, str, str]] = field(default_factory=list)  # seconds, call, outcome
    acknowledged: list[tuple[str, int, dict[str, int]]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def all_ok(self) -> bool:
        return set(self.outcomes) == {"ledger: ok", "pipeline: ok", "get: ok"}


async def _callers(connector: RedisConnector, ledger: ToolLedger, calls: Calls, stop: asyncio.Event,
                   possible: dict[str, set[bytes]]) -> None:
    """Until `stop`: each caller writes through the tool ledger, then a pipeline SET + GET, then a GET.
    `possible` holds what each raw key may hold: the last value written with an answer, and any
    written since without one (a command cut by the deadline may still be applied once the server
    resumes)."""
    loop = asyncio.get_running_loop()

    async def timed(name: str, op: Awaitable[None]) -> None:
        started = loop.time()
        try:
            await op
            outcome = "ok"
        except StoreUnavailable as e:
            assert int(e.headers()["Retry-After"]) >= 1
            outcome = "store_unavailable"
            connector.health.mark_ok()  # as the recovery probe would, at once: keep calling the hung server
        except Exception as e:
            if is_redis_failure(e):
                outcome = f"redis {type(e).__name__}"
                connector.report_failure(e)  # as every caller does
            else:
                outcome = f"other {type(e).__module__}.{type(e).__name__}"
                calls.unexpected.append(f"{name}: {e!r}")
        calls.outcomes[f"{name}: {outcome}"] += 1
        calls.durations.append((loop.time() - started, name, outcome))

    async def ledger_write(session: str, step: int) -> None:
        message = {"step": step}
        assert await ledger.record_step("t", session, 0, step, message) == message
        calls.acknowledged.append((session, step, message))

    async def pipeline(key: str, value: bytes) -> None:
        possible.setdefault(key, set()).add(value)
        pipe = connector.session_client().pipeline(transaction=False)
        pipe.set(key, value, ex=300)
        pipe.get(key)
        assert await pipe.execute() == [True, value]
        possible[key] = {value}

    async def get(key: str) -> None:
        value = await connector.session_client().get(key)
        assert value in possible[key], (key, value, possible[key])

    async def caller(n: int) -> None:
        step = 0
        while not stop.is_set():
            step += 1
            session = f"c{n}-{step % 7}"  # sessions of every caller spread over the Cluster's slots
            key = connector.key("raw", f"{{c{n}-{step % 5}}}", "k")
            value = f"{n}:{step}".encode()
            await timed("ledger", ledger_write(session, step))
            await timed("pipeline", pipeline(key, value))
            await timed("get", get(key))
            await asyncio.sleep(0.02)

    await asyncio.gather(*(caller(n) for n in range(CALLERS)))


async def _pool_in_use_settles(connector: RedisConnector) -> int:
    for _ in range(50):
        in_use = connector.pool_stats()["inUse"]
        if in_use == 0:
            return 0
        await asyncio.sleep(0.1)
    return in_use


async def test_a_hung_redis_fails_each_command_within_its_deadline_and_leaves_no_broken_connection(
        target: Target) -> None:
    connector = RedisConnector(RedisStoreConfig(
        backend="redis", url=target.url, cluster=target.cluster, key_prefix=f"deadline{uuid.uuid4().hex[:8]}",
        connect_timeout_seconds=0.5, socket_timeout_seconds=SOCKET_TIMEOUT_SECONDS,
        command_timeout_seconds=DEADLINE_SECONDS,
        recover_interval_seconds=600,  # the client is never replaced: what a cancelled command left shows
    ), {})
    await connector.start()
    ledger = ToolLedger(connector, ttl_seconds=300)
    before, during, after = Calls(), Calls(), Calls()
    possible: dict[str, set[bytes]] = {}
    try:
        assert connector.health.state == "ok"
        stop = asyncio.Event()
        run = asyncio.create_task(_callers(connector, ledger, before, stop, possible))
        await asyncio.sleep(1.0)
        stop.set()
        await run
        assert before.all_ok(), (dict(before.outcomes), before.unexpected[:5])

        stop = asyncio.Event()
        run = asyncio.create_task(_callers(connector, ledger, during, stop, possible))
        target.victim.pause()
        try:
            await asyncio.sleep(STALL_SECONDS)
        finally:
            target.victim.resume()
        if target.wait_healthy is not None:
            await asyncio.to_thread(target.wait_healthy)
        stop.set()
        # The outer bound only keeps a broken client from hanging the test.
        async with asyncio.timeout(60):
            await run

        slowest = max(during.durations)
        overdue = [d for d in during.durations if d[0] > DEADLINE_SECONDS + MARGIN_SECONDS]
        print(f"{'cluster' if target.cluster else 'standalone'}: {len(during.durations)} calls during the stall,",
              dict(during.outcomes), f"slowest {slowest[0]:.2f} s ({slowest[1]}, {slowest[2]}),",
              f"over {DEADLINE_SECONDS + MARGIN_SECONDS:g} s: {len(overdue)}")
        assert not overdue, f"{len(overdue)} calls outlived the deadline: {sorted(overdue, reverse=True)[:5]}"
        assert not during.unexpected, (dict(during.outcomes), during.unexpected[:5])
        assert during.outcomes["ledger: store_unavailable"] > 0, "the stall was not felt: proved nothing"

        connector.health.mark_ok()
        for session, step, message in before.acknowledged + during.acknowledged:
            record = await ledger.load("t", session, 0)
            assert record.steps.get(step) == message, (session, step, record.steps.get(step))

        # Every reply after the stall belongs to its own command, and nothing is stranded in the pool.
        stop = asyncio.Event()
        run = asyncio.create_task(_callers(connector, ledger, after, stop, possible))
        await asyncio.sleep(2.0)
        stop.set()
        await run
        assert after.all_ok(), (dict(after.outcomes), after.unexpected[:5])
        assert await _pool_in_use_settles(connector) == 0, connector.pool_stats()
    finally:
        target.victim.resume()
        await connector.close()


async def test_a_deadline_that_cuts_the_hand_back_of_a_connection_does_not_strand_it(
        redis_url: str, key_prefix: str) -> None:
    """The deadline fires while a command that got its reply waits to hand its connection back to the
    pool (the pool's lock is held meanwhile, as under contention at the pool's cap): the caller gets
    the deadline's error, and the connection still goes back to the pool instead of staying counted
    as in use for good (each such cut would shrink the pool by one)."""
    connector = RedisConnector(RedisStoreConfig(backend="redis", url=redis_url, key_prefix=key_prefix,
                                                socket_timeout_seconds=5, command_timeout_seconds=0.5), {})
    await connector.start()
    try:
        client = connector.session_client()
        pool = client.connection_pool
        assert isinstance(pool, BlockingConnectionPool)
        await client.ping()
        command = asyncio.create_task(client.blpop([connector.key("never-pushed")], timeout=0.2))  # answered at 0.2 s
        await asyncio.sleep(0.05)
        async with pool._condition:  # held past the deadline: the hand-back waits for it
            await asyncio.sleep(0.8)
            assert command.done()
        with pytest.raises(CommandDeadlineExceeded):
            await command
        await asyncio.sleep(0.1)
        assert connector.pool_stats()["inUse"] == 0, connector.pool_stats()
        assert await client.ping()
    finally:
        await connector.close()
