"""Stores that do not simply die: a Redis or a Postgres that hangs (SIGSTOP), connections cut under the runtime
(CLIENT KILL, a Redis restart, pg_terminate_backend), a Redis that refuses writes (OOM under
noeviction, a demoted master answering READONLY) and a paused Redis Cluster master.

Each drill starts its own stores (tests/support/stores.py; never the shared ones of
hack/services.sh) and runtime processes, runs bounded load through the fault, and checks:

* no request outlives its deadline (`REQUEST_DEADLINE_SECONDS`, well above the runtime's store
  timeouts and well below each stall): a hung store makes requests fail or finish, not wait;
* no 500 and no error outside the expected codes: a refused turn is a 503 with Retry-After and a
  JSON error code (`store_unavailable`), an answer broken after its `start` event ends with an
  `error` event of that code and is resumed by its client;
* every acknowledged turn is stored, once, whole (tests/support/drill.py `audit`);
* the runtime recovers by itself once the store is back: a later burst is served, nothing refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.support.drill import Load, Outcome, audit, drill_config, start_runtimes, wait_ready
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess
from tests.support.stores import PostgresServer, RedisCluster, RedisServer, redis_cli

pytestmark = pytest.mark.chaos

CLIENTS = 12
# The drills' Redis timeouts (drill_config): connect 0.5 s, socket 1 s, pool wait 2 s, one retry.
# One failing command gives up within ~5 s; a request that still runs after this long waited on a
# hung store. Every stall below lasts longer than this, so a request that waits it out is caught.
REQUEST_DEADLINE_SECONDS = 9.0
STALL_SECONDS = 12.0
CLUSTER_STALL_SECONDS = 16.0
CLUSTER_COMMAND_DEADLINE_SECONDS = 2.0  # stores.redis.commandTimeoutSeconds of the Cluster drill
EXPECTED_CODES = {"store_unavailable"}
TAIL_SECONDS = 2.0  # load after a fault ends (a burst with a fault lasts until then, at most `seconds`)
FAULT_BURST_SECONDS = 45.0


def _shared_dsn() -> str:
    dsn = os.environ.get("STRATA_TEST_POSTGRES_DSN")
    if not dsn:
        pytest.fail("needs hack/services.sh up and its env (STRATA_TEST_POSTGRES_DSN)")
    return dsn


async def _burst(runtimes: list[RuntimeProcess], seconds: float, fault: Callable[[], Awaitable[None]] | None = None,
                 *, think_seconds: float = 0.0, name: str = "burst") -> Outcome:
    """Load for `seconds`, or with `fault` running beside it until TAIL_SECONDS after the fault ended
    (at most `seconds`); then the checks every drill shares."""
    load = Load([r.base_url for r in runtimes], clients=CLIENTS, think_seconds=think_seconds,
                deadline_seconds=REQUEST_DEADLINE_SECONDS)
    async def fault_then_tail() -> None:
        assert fault is not None
        try:
            await fault()
        finally:  # the load goes on a little after the fault, however long the fault took
            await asyncio.sleep(TAIL_SECONDS)
            load.stop()

    try:
        if fault is None:
            outcome = await load.run(seconds)
        else:
            outcome, _ = await asyncio.gather(load.run(seconds), fault_then_tail())
    finally:
        await load.close()
    print(f"{name}:", outcome.summary(), "503 codes:", dict(outcome.refused_codes),
          "stream error codes:", dict(outcome.stream_error_codes),
          f"slowest request: {outcome.slowest_seconds:.1f} s")
    assert not outcome.overdue, f"requests outlived their deadline: {outcome.overdue[:5]}"
    assert not outcome.unexpected, outcome.unexpected[:5]
    print(f"{name}: audit", await audit(runtimes[0].base_url, outcome.acked))
    assert outcome.refused_without_retry_after == 0, "every 503 carries Retry-After"
    assert set(outcome.refused_codes) <= EXPECTED_CODES, dict(outcome.refused_codes)
    assert set(outcome.stream_error_codes) <= EXPECTED_CODES, dict(outcome.stream_error_codes)
    return outcome


async def _served_cleanly(runtimes: list[RuntimeProcess], *, name: str, seconds: float = 3.0) -> Outcome:
    """After the fault: the same runtimes serve a burst with nothing refused and nothing broken."""
    await wait_ready(runtimes)
    outcome = await _burst(runtimes, seconds, name=name)
    assert outcome.refused == 0 and outcome.unacknowledged_breaks == 0, outcome.summary()
    assert len(outcome.acked) == outcome.completed > 0, outcome.summary()
    assert sum(1 for a in outcome.acked if a.resumes) == 0, outcome.summary()
    return outcome


def _runtimes(tmp_path: Path, upstream: UpstreamServer, redis_url: str, count: int, *,
              cluster: bool = False, redis: dict[str, Any] | None = None) -> list[RuntimeProcess]:
    """`count` runtimes on `redis_url` (`redis`: more of stores.redis) and the shared Postgres; the
    upstream answers in 4 chunks 30 ms apart."""
    upstream.control(chunks=4, chunk_delay_ms=30)
    config = drill_config(tmp_path, upstream, redis_url=redis_url, cluster=cluster)
    config["stores"]["redis"].update(redis or {})
    return start_runtimes(config, tmp_path, count, {"STRATA_TEST_POSTGRES_DSN": _shared_dsn()})


def _stop(runtimes: list[RuntimeProcess]) -> None:
    for runtime in runtimes:
        runtime.stop()


# ----------------------------------------------------------------------------------- hung stores


async def test_redis_paused_longer_than_its_timeouts_fails_requests_in_time_and_recovers(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    redis = RedisServer(tmp_path).start()
    runtimes = _runtimes(tmp_path, openai_upstream, redis.url, 2)

    async def stall() -> None:
        await asyncio.sleep(2.0)
        redis.pause()
        try:
            await asyncio.sleep(STALL_SECONDS)
        finally:
            redis.resume()

    try:
        outcome = await _burst(runtimes, FAULT_BURST_SECONDS, stall, name="redis paused")
        assert outcome.refused + outcome.unacknowledged_breaks + sum(1 for a in outcome.acked if a.resumes) > 0, \
            "the stall was not felt: the drill proved nothing"
        await _served_cleanly(runtimes, name="after SIGCONT")
    finally:
        redis.resume()
        _stop(runtimes)
        redis.stop()


async def _read_sessions(base: str, session_ids: list[str], stop: asyncio.Event) -> Counter[str]:
    """Session reads until `stop` (each also reads Postgres: the archived history, and a session not
    in Redis its spilled copy): the status of each (`overdue` past the deadline, `transport` for a
    dropped connection), and for a 503 its code."""
    seen: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=30) as http:
        while not stop.is_set():
            sid = random.choice([*session_ids, f"never-{uuid.uuid4().hex[:8]}"])
            try:
                async with asyncio.timeout(REQUEST_DEADLINE_SECONDS):
                    resp = await http.get(f"{base}/api/v1/sessions/{sid}")
                seen[str(resp.status_code) if resp.status_code != 503 else f"503 {resp.json()['error']['code']}"] += 1
            except TimeoutError:
                seen["overdue"] += 1
            except httpx.TransportError:
                seen["transport"] += 1
            await asyncio.sleep(0.1)
    return seen


async def test_postgres_paused_longer_than_its_timeouts_fails_requests_in_time_and_recovers(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    """The whole Postgres server is stopped (SIGSTOP) under turns and session reads. Turns of sessions
    in Redis go on; archives back off; reads (they need Postgres) and turns that need it fail with
    503 in time: nothing waits on the hung server (statements are bounded by the default
    `stores.sql.commandTimeoutSeconds`, 5 s)."""
    openai_upstream.control(chunks=4, chunk_delay_ms=30)
    postgres = await asyncio.to_thread(PostgresServer().start)
    redis = RedisServer(tmp_path).start()
    config = drill_config(tmp_path, openai_upstream, redis_url=redis.url, dsn_env="STRATA_DRILL_PG_DSN",
                          memory={"sessionIdleSeconds": 1})
    runtimes = start_runtimes(config, tmp_path, 2, {"STRATA_DRILL_PG_DSN": postgres.dsn})
    first = await _burst(runtimes, 3.0, think_seconds=1.5, name="before")
    sessions = sorted({a.session_id for a in first.acked})
    stop_reading = asyncio.Event()
    readers = [asyncio.create_task(_read_sessions(r.base_url, sessions, stop_reading)) for r in runtimes * 2]

    async def stall() -> None:
        await asyncio.sleep(2.0)
        postgres.pause()
        try:
            await asyncio.sleep(STALL_SECONDS)
        finally:
            postgres.resume()

    try:
        await _burst(runtimes, FAULT_BURST_SECONDS, stall, think_seconds=1.5, name="postgres paused")
        stop_reading.set()
        reads = sum((await asyncio.gather(*readers)), Counter[str]())
        print("session reads during the stall:", dict(reads))
        assert reads["overdue"] == 0 and reads["transport"] == 0, dict(reads)
        assert set(reads) <= {"200", "404", "503 store_unavailable", "overdue", "transport"}, dict(reads)
        assert reads["503 store_unavailable"] > 0, "no read needed Postgres during the stall: proved nothing"
        await _served_cleanly(runtimes, name="after SIGCONT (postgres)")
    finally:
        stop_reading.set()
        await asyncio.gather(*readers, return_exceptions=True)
        postgres.resume()
        _stop(runtimes)
        redis.stop()
        await asyncio.to_thread(postgres.stop)


# ----------------------------------------------------------------------------------- stale connections


async def test_redis_connections_killed_or_server_restarted_between_bursts_are_replaced(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    """Every pooled connection is cut while idle (CLIENT KILL, then a clean restart on the same port):
    the next commands find them dead and retry on a fresh connection, so the next burst is served
    as if nothing had happened."""
    redis = RedisServer(tmp_path).start()
    runtimes = _runtimes(tmp_path, openai_upstream, redis.url, 2)
    try:
        await _burst(runtimes, 3.0, name="before")
        killed = redis_cli(redis.port, "CLIENT", "KILL", "TYPE", "normal")
        print("CLIENT KILL TYPE normal:", killed)
        assert int(killed) > 0, "no runtime connection to kill: the drill proved nothing"
        await _served_cleanly(runtimes, name="after CLIENT KILL")
        await asyncio.to_thread(redis.restart)
        await _served_cleanly(runtimes, name="after a restart on the same port")
    finally:
        _stop(runtimes)
        redis.stop()


async def _terminate_backends(dsn: str) -> int:
    """pg_terminate_backend on every other client backend of the (private) server: the runtimes'."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'")
        return sum(1 for r in rows if r["done"])
    finally:
        await conn.close()


async def test_postgres_backends_terminated_between_and_during_bursts_lose_nothing(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    """Sessions are released to Postgres after 1 s idle, so turns read and write it. Its backends are
    terminated between two bursts (the pool's idle connections are dead when the burst starts) and
    every second during a burst (statements in flight fail): safe statements are retried on a
    fresh connection, anything else is a clear 503, and nothing acknowledged is lost."""
    openai_upstream.control(chunks=4, chunk_delay_ms=30)
    postgres = await asyncio.to_thread(PostgresServer().start)
    redis = RedisServer(tmp_path).start()
    config = drill_config(tmp_path, openai_upstream, redis_url=redis.url, dsn_env="STRATA_DRILL_PG_DSN",
                          memory={"sessionIdleSeconds": 1})
    runtimes = start_runtimes(config, tmp_path, 2, {"STRATA_DRILL_PG_DSN": postgres.dsn})
    terminated: list[int] = []

    async def terminate_every_second() -> None:
        for _ in range(5):
            await asyncio.sleep(1.0)
            terminated.append(await _terminate_backends(postgres.dsn))

    try:
        await _burst(runtimes, 4.0, think_seconds=1.5, name="before")
        await asyncio.sleep(1.5)  # let the idle sessions be released to Postgres
        terminated.append(await _terminate_backends(postgres.dsn))
        after = await _burst(runtimes, 4.0, think_seconds=1.5, name="after pg_terminate_backend")
        assert after.refused == 0, f"the first requests after stale connections were refused: {after.summary()}"
        await _burst(runtimes, FAULT_BURST_SECONDS, terminate_every_second, think_seconds=1.5,
                     name="terminated during a burst")
        print("backends terminated:", terminated)
        assert terminated[0] > 0 and sum(terminated[1:]) > 0, "no runtime connection terminated: proved nothing"
        await _served_cleanly(runtimes, name="after the terminations")
    finally:
        _stop(runtimes)
        redis.stop()
        await asyncio.to_thread(postgres.stop)


# ----------------------------------------------------------------------------------- refused writes


async def _one_turn(base: str, session_id: str, message: str) -> tuple[int, str]:
    """One streamed turn on a session of its own: the status, and the error code of a refusal or
    `acknowledged` when its `start` event came."""
    body = {"message": message, "session_id": session_id, "chatbot_id": "support", "stream": True}
    async with httpx.AsyncClient(timeout=REQUEST_DEADLINE_SECONDS) as http, \
            http.stream("POST", f"{base}/api/v1/query", json=body) as resp:
        if resp.status_code != 200:
            return resp.status_code, str(orjson.loads(await resp.aread())["error"]["code"])
        async for line in resp.aiter_lines():
            if line == "event: start":
                return 200, "acknowledged"
    return 200, "no start event"


async def _refused_writes_drill(runtimes: list[RuntimeProcess], refuse: Callable[[], Awaitable[None]],
                                allow: Callable[[], Awaitable[None]], *, name: str) -> None:
    """Load through a period of refused writes; within it, turns on fresh sessions are refused
    (503 store_unavailable, never acknowledged) and, once writes are allowed again, none of them
    was stored."""
    base = runtimes[0].base_url
    probes: list[tuple[str, int, str]] = []

    async def fault() -> None:
        await asyncio.sleep(1.5)
        await refuse()
        try:
            for _ in range(5):
                session_id = f"refused-{uuid.uuid4().hex[:8]}"
                status, code = await _one_turn(base, session_id, "a turn whose write is refused")
                probes.append((session_id, status, code))
                await asyncio.sleep(0.3)
        finally:
            await allow()

    outcome = await _burst(runtimes, FAULT_BURST_SECONDS, fault, think_seconds=0.5, name=name)
    print(f"{name}: turns on fresh sessions while writes were refused:", Counter((s, c) for _, s, c in probes))
    assert all((status, code) == (503, "store_unavailable") for _, status, code in probes), probes
    assert outcome.refused + sum(outcome.stream_error_codes.values()) > 0, "the load never felt the refusal"
    async with httpx.AsyncClient(timeout=10) as http:
        for session_id, _, _ in probes:
            resp = await http.get(f"{base}/api/v1/sessions/{session_id}")
            assert resp.status_code == 404, (session_id, resp.status_code, resp.text[:300])


async def test_redis_out_of_memory_refuses_turns_clearly_and_acknowledges_none_of_them(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    redis = RedisServer(tmp_path).start()
    runtimes = _runtimes(tmp_path, openai_upstream, redis.url, 1)

    async def refuse() -> None:
        assert redis_cli(redis.port, "CONFIG", "SET", "maxmemory-policy", "noeviction") == "OK"
        assert redis_cli(redis.port, "CONFIG", "SET", "maxmemory", "1") == "OK"

    async def allow() -> None:
        assert redis_cli(redis.port, "CONFIG", "SET", "maxmemory", "0") == "OK"

    try:
        await _refused_writes_drill(runtimes, refuse, allow, name="redis OOM")
        await _served_cleanly(runtimes, name="after OOM")
    finally:
        _stop(runtimes)
        redis.stop()


async def test_redis_demoted_to_a_read_only_replica_refuses_turns_clearly(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    """The runtime's Redis is demoted to a replica by a manual failover that loses no write (writes
    paused while the replica catches up, as Sentinel's and Cluster's manual failovers do), with the
    same data: reads answer, writes get READONLY. Turns are refused, none acknowledged; once it is a
    master again the runtime serves by itself."""
    redis = RedisServer(tmp_path).start()
    other = RedisServer(tmp_path).start()
    runtimes = _runtimes(tmp_path, openai_upstream, redis.url, 1)

    def replication(port: int) -> dict[str, str]:
        lines = redis_cli(port, "INFO", "replication").splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def caught_up() -> bool:
        theirs = replication(other.port)
        return theirs.get("master_link_status") == "up" and \
            theirs.get("master_repl_offset") == replication(redis.port).get("master_repl_offset")

    async def demote() -> None:
        assert redis_cli(other.port, "REPLICAOF", "127.0.0.1", str(redis.port)) == "OK"
        await _until(caught_up)
        assert redis_cli(redis.port, "CLIENT", "PAUSE", "5000", "WRITE") == "OK"
        await _until(caught_up)
        assert redis_cli(other.port, "REPLICAOF", "NO", "ONE") == "OK"
        assert redis_cli(redis.port, "REPLICAOF", "127.0.0.1", str(other.port)) == "OK"
        assert redis_cli(redis.port, "CLIENT", "UNPAUSE") == "OK"
        await _until(lambda: replication(redis.port).get("master_link_status") == "up")

    async def promote() -> None:
        assert redis_cli(redis.port, "REPLICAOF", "NO", "ONE") == "OK"

    try:
        await _refused_writes_drill(runtimes, demote, promote, name="redis READONLY")
        await _served_cleanly(runtimes, name="after READONLY")
    finally:
        _stop(runtimes)
        redis.stop()
        other.stop()


async def _until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        for _ in itertools.count():
            if await asyncio.to_thread(predicate):
                return
            await asyncio.sleep(0.1)


# ----------------------------------------------------------------------------------- a paused Cluster master


async def test_redis_cluster_master_paused_fails_requests_in_time_and_recovers(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    """One of three masters (no replicas) stopped: the others mark it failed and the cluster refuses
    commands until it is back. Answers whose producer stalled are taken over by the other pod (this
    drill lost an acknowledged user turn that way, see test_archive_stale_copy.py). The Cluster client
    retries a failed command once after refreshing the topology from every node (each up to the
    connect + socket timeouts): without an overall deadline per command a request took up to 8.7 s
    here. With `commandTimeoutSeconds` (2 s) requests are held to the same deadline as on a
    standalone Redis."""
    cluster = await asyncio.to_thread(RedisCluster(tmp_path).start)
    runtimes = _runtimes(tmp_path, openai_upstream, cluster.url, 2, cluster=True,
                         redis={"commandTimeoutSeconds": CLUSTER_COMMAND_DEADLINE_SECONDS})
    victim = cluster.nodes[1]

    async def stall() -> None:
        await asyncio.sleep(2.0)
        victim.pause()
        try:
            await asyncio.sleep(CLUSTER_STALL_SECONDS)
        finally:
            victim.resume()
        await asyncio.to_thread(cluster.wait_healthy)

    try:
        outcome = await _burst(runtimes, FAULT_BURST_SECONDS, stall, name="cluster master paused")
        assert outcome.refused + outcome.unacknowledged_breaks + sum(1 for a in outcome.acked if a.resumes) > 0, \
            "the stall was not felt: the drill proved nothing"
        await _served_cleanly(runtimes, name="after SIGCONT (cluster)")
    finally:
        for node in cluster.nodes:
            with contextlib.suppress(Exception):
                node.resume()
        _stop(runtimes)
        cluster.stop()


