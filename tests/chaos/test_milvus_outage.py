"""A Milvus server SIGKILLed and restarted under bounded concurrent load, on real processes.

Two runtime processes share one Redis (`auto`), one Postgres and one Milvus standalone server
(`stores.vectors.backend: milvus`), with long-term memory on and archives every 4 turns, so the
load writes summaries into Milvus and, once a session has archives, recalls from it on every turn.
The Milvus server (and its child) is SIGKILLed mid-load and started again on the same data
directory. Afterwards: every acknowledged turn is stored exactly once and in order, nothing but
documented 503s (with Retry-After) was answered, a memory write while Milvus is down is refused
with 503 `store_unavailable` (never kept in the pod and acknowledged), `/readyz` failed while
Milvus was down (the vector store is required) and recovers, and long-term memory works again: an item stored after
the restart is recalled through the other runtime, and so is one stored before the kill (Milvus
replays its write-ahead log on restart). Archive batches that exhausted their retries during the
outage are parked in SQL and re-driven once Milvus is back: every batch in the SQL history ends up
with its summary in Milvus, or is still parked with a reason (only batches whose summary was never
made, which waits for its session's next turn: no LLM call for a session whose client is gone).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.drill import Load, audit, drill_config, start_runtimes, wait_ready
from tests.support.fixtures import UpstreamServer
from tests.support.milvus_server import MilvusServer
from tests.support.runtime_process import RuntimeProcess
from tests.support.stores import PostgresServer, RedisServer

pytestmark = pytest.mark.chaos

CLIENTS = 12
LOAD_SECONDS = 30.0
RECALL_DEADLINE_SECONDS = 60.0
REDRIVE_DEADLINE_SECONDS = 240.0
SCOPE = {"agent_id": "support", "tenant_id": "local"}


def _config(tmp_path: Path, upstream: UpstreamServer, redis: RedisServer, milvus: MilvusServer) -> dict[str, Any]:
    config = drill_config(tmp_path, upstream, redis_url=redis.url, dsn_env="STRATA_DRILL_PG_DSN")
    config["stores"]["vectors"] = {"backend": "milvus", "uri": milvus.uri, "connectTimeoutSeconds": 3,
                                   "recoverIntervalSeconds": 0.5}
    config["memory"]["longTerm"] = {"enabled": True, "collection": f"drill_{uuid.uuid4().hex[:8]}"}
    return config


async def _store(http: httpx.AsyncClient, runtime: RuntimeProcess, content: str) -> str:
    resp = await http.post(f"{runtime.base_url}/internal/agent-memory/store",
                           json={**SCOPE, "kind": "kb", "content": content})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


async def _recalled(http: httpx.AsyncClient, runtime: RuntimeProcess, item: str, content: str) -> bool:
    """Whether `runtime` recalls `item` (bounded wait: Milvus searches are "Bounded" consistent, a
    write of the last seconds may not be visible yet)."""
    deadline = time.monotonic() + RECALL_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        resp = await http.post(f"{runtime.base_url}/internal/agent-memory/query",
                               json={**SCOPE, "query": content, "limit": 10, "kind": "kb"})
        assert resp.status_code in (200, 503), resp.text
        if resp.status_code == 200 and item in [hit["id"] for hit in resp.json()["items"]]:
            return True
        await asyncio.sleep(1.0)
    return False


async def _metric(http: httpx.AsyncClient, runtimes: list[RuntimeProcess], prefix: str) -> float:
    total = 0.0
    for runtime in runtimes:
        text = (await http.get(f"{runtime.base_url}/metrics")).text
        total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))
    return total


def _ids_in_milvus(uri: str, prefix: str, ids: list[str]) -> set[str]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri, timeout=30)
    found: set[str] = set()
    try:
        for name in [c for c in client.list_collections() if c.startswith(prefix)]:
            for i in range(0, len(ids), 500):
                rows = client.query(name, filter=f"id in {json.dumps(ids[i:i + 500])}", output_fields=["id"],
                                    consistency_level="Strong")
                found |= {str(r["id"]) for r in rows}
    finally:
        client.close()
    return found


async def _parked(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch("SELECT batch_id, reason, summary IS NOT NULL AS made FROM strata_archive_parked"))
    finally:
        await conn.close()


async def _archives_accounted(dsn: str, milvus: MilvusServer, collection: str) -> dict[str, int]:
    """Wait for the re-drive of every parked batch whose summary was made, then check that each batch
    in the SQL history has its summary in Milvus or is parked with a reason."""
    deadline = time.monotonic() + REDRIVE_DEADLINE_SECONDS
    while any(r["made"] for r in await _parked(dsn)):
        assert time.monotonic() < deadline, "parked batches with a summary were not re-driven after the restart"
        await asyncio.sleep(2.0)
    conn = await asyncpg.connect(dsn)
    try:
        history = [str(r["batch_id"]) for r in await conn.fetch("SELECT batch_id FROM strata_session_history")]
    finally:
        await conn.close()
    parked = {str(r["batch_id"]): str(r["reason"]) for r in await _parked(dsn)}
    assert set(parked.values()) <= {"archive_failed", "buffer_cap"}, parked
    in_milvus = await asyncio.to_thread(_ids_in_milvus, milvus.uri, collection, history)
    missing = set(history) - in_milvus - set(parked)
    assert not missing, f"{len(missing)} archived batches have no summary and are not parked"
    reasons = {reason: list(parked.values()).count(reason) for reason in set(parked.values())}
    return {"history": len(history), "in_milvus": len(in_milvus & set(history)), "still_parked": len(parked),
            **{f"still_parked_{reason}": n for reason, n in reasons.items()}}


async def test_milvus_server_sigkilled_under_load_loses_no_turn_and_memory_recovers(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(chunks=4, chunk_delay_ms=30)
    milvus = await asyncio.to_thread(MilvusServer(tmp_path).start)
    postgres = await asyncio.to_thread(PostgresServer().start)
    redis = RedisServer(tmp_path).start()
    runtimes: list[RuntimeProcess] = []
    http = httpx.AsyncClient(timeout=30)
    try:
        config = _config(tmp_path, openai_upstream, redis, milvus)
        runtimes = start_runtimes(config, tmp_path, 2, {"STRATA_DRILL_PG_DSN": postgres.dsn})
        before_text = f"before the outage: replacement cards ship from depot {uuid.uuid4().hex[:6]}"
        before = await _store(http, runtimes[0], before_text)
        assert await _recalled(http, runtimes[1], before, before_text), "no recall even before the outage"

        killed: list[int] = []
        during: list[httpx.Response] = []

        async def outage() -> None:
            await asyncio.sleep(5.0)
            await asyncio.to_thread(milvus.kill)
            assert milvus.process is not None
            killed.append(milvus.process.returncode)
            during.append(await http.post(f"{runtimes[1].base_url}/internal/agent-memory/store",
                                          json={**SCOPE, "kind": "kb", "content": "written while Milvus is down"}))
            await asyncio.sleep(4.0)
            await asyncio.to_thread(milvus.start)

        load = Load([r.base_url for r in runtimes], clients=CLIENTS)
        try:
            outcome, _ = await asyncio.gather(load.run(LOAD_SECONDS, sample_readyz=True), outage())
        finally:
            await load.close()
        print("drill:", outcome.summary(), "readyz:", dict(outcome.readyz), "milvus exit:", killed)
        assert killed and killed[0] < 0, f"the Milvus server was not killed: {killed}"
        assert outcome.readyz[503] > 0, "readiness never saw the Milvus outage: the drill proved nothing"
        # A memory write while Milvus is down is refused, not kept in the pod and acknowledged.
        assert during[0].status_code == 503 and during[0].headers.get("retry-after"), during[0].text
        assert during[0].json()["error"]["code"] == "store_unavailable", during[0].text
        assert not outcome.unexpected, outcome.unexpected[:5]
        assert outcome.refused_without_retry_after == 0, "every 503 carries Retry-After"
        assert outcome.completed > 0
        print("audit:", await audit(runtimes[0].base_url, outcome.acked))

        await wait_ready(runtimes, timeout=60)
        after_text = f"after the restart: refunds settle within {uuid.uuid4().hex[:6]} days"
        after = await _store(http, runtimes[1], after_text)
        assert await _recalled(http, runtimes[0], after, after_text), "a memory written after the restart is lost"
        assert await _recalled(http, runtimes[0], before, before_text), \
            "a memory acknowledged before the kill did not survive the Milvus restart"

        accounted = await _archives_accounted(postgres.dsn, milvus, config["memory"]["longTerm"]["collection"])
        parked = await _metric(http, runtimes, 'strata_memory_archive_batches_total{outcome="parked"')
        redriven = await _metric(http, runtimes, 'strata_memory_archive_batches_total{outcome="redriven"')
        print("archives:", accounted, "parked:", parked, "redriven:", redriven)
        assert parked > 0, "no archive batch exhausted its retries: the re-drive was not exercised"
        assert redriven > 0
    finally:
        await http.aclose()
        for runtime in runtimes:
            runtime.stop()
        redis.stop()
        await asyncio.to_thread(postgres.stop)
        await asyncio.to_thread(milvus.stop)
