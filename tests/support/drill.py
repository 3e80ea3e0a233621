"""The store-outage drill: bounded concurrent conversations against real runtime processes while a
store is killed and restarted, then an audit of every acknowledged turn.

A turn counts as *acknowledged* when its SSE ``start`` event arrived (that event carries the
turn's ``turn_seq``). A refused turn (503 + Retry-After) is not acknowledged; the client sends
a new message. An acknowledged answer that breaks (an ``error`` event during the outage, a
dropped connection) is resumed with ``Last-Event-ID`` until it is done.

The audit, per session: sequence numbers strictly increasing (none issued twice); every
acknowledged turn present exactly once, in acknowledgement order, with its user message at
``turn_seq - 1`` and its whole answer at ``turn_seq``; and what the client was shown equals
what was stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess, embedded_config

RESUME_DEADLINE_SECONDS = 45.0


def drill_config(tmp_path: Path, upstream: UpstreamServer, *, redis_url: str, cluster: bool = False,
                 dsn_env: str = "STRATA_TEST_POSTGRES_DSN", sql_backend: str = "postgresql",
                 memory: dict[str, Any] | None = None) -> dict[str, Any]:
    """Redis `auto` (the default that lost turns in issue 15), Postgres, archives on (bufferTurns 4)."""
    return embedded_config(
        tmp_path,
        stores={"redis": {"backend": "auto", "url": redis_url, "cluster": cluster,
                          "keyPrefix": f"drill{uuid.uuid4().hex[:8]}", "recoverIntervalSeconds": 0.5,
                          "connectTimeoutSeconds": 0.5, "socketTimeoutSeconds": 1.0},
                "sql": {"backend": sql_backend, "dsnEnv": dsn_env, "recoverIntervalSeconds": 0.5,
                        "sqlitePath": str(tmp_path / "fallback.db")},
                "vectors": {"backend": "memory"}},
        embedder={"provider": "openai", "baseUrl": upstream.base_url, "apiKeyEnv": "STRATA_TEST_UPSTREAM_KEY",
                  "model": "text-embedding-3-small"},
        models=[{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream.base_url,
                 "apiKeyEnv": "STRATA_TEST_UPSTREAM_KEY", "maxRetries": 0, "timeoutSeconds": 30}],
        agents=[{"id": "support", "tenant": "local", "model": "gpt-4o-mini", "systemPrompt": "Be brief."}],
        memory={"streamStaleSeconds": 1.0, "bufferTurns": 4, "maxBufferTurns": 8, "archiveRetrySeconds": 0.5,
                **(memory or {})},
        cache={"enabled": False},
    )


def start_runtimes(config: dict[str, Any], workdir: Path, count: int, env: dict[str, str]) -> list[RuntimeProcess]:
    runtimes = []
    for i in range(count):
        (workdir / f"rt{i}").mkdir(parents=True, exist_ok=True)
        runtimes.append(RuntimeProcess(config, workdir / f"rt{i}",
                                       env={"STRATA_TEST_UPSTREAM_KEY": "test-key", **env}).start())
    return runtimes


@dataclass
class Acked:
    session_id: str
    message: str
    turn_seq: int
    shown: str = ""
    done: bool = False
    resumes: int = 0


@dataclass
class Outcome:
    acked: list[Acked] = field(default_factory=list)
    requests: int = 0  # new turns and resumes sent
    connection_close: int = 0  # answers that told the client to reconnect (a draining runtime)
    refused: int = 0
    refused_without_retry_after: int = 0
    unacknowledged_breaks: int = 0
    refused_codes: Counter[str] = field(default_factory=Counter)  # error code of each 503
    break_kinds: Counter[str] = field(default_factory=Counter)  # exception of each unacknowledged break
    break_times: list[float] = field(default_factory=list)  # wall-clock time of each
    unexpected: list[str] = field(default_factory=list)
    readyz: Counter[int] = field(default_factory=Counter)
    stream_error_codes: Counter[str] = field(default_factory=Counter)  # code of each `error` event
    overdue: list[str] = field(default_factory=list)  # requests cut at the Load's deadline
    slowest_seconds: float = 0.0  # the longest request timed against the deadline (for the record)

    @property
    def completed(self) -> int:
        return sum(1 for a in self.acked if a.done)

    def summary(self) -> dict[str, int]:
        return {"requests": self.requests, "acknowledged": len(self.acked), "completed": self.completed,
                "refused_503": self.refused, "connection_close": self.connection_close,
                "resumed": sum(1 for a in self.acked if a.resumes), "unexpected": len(self.unexpected),
                "unacknowledged_breaks": self.unacknowledged_breaks, "overdue": len(self.overdue)}


def _error_code(body: bytes) -> str:
    try:
        return str(orjson.loads(body)["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"not JSON: {body[:60]!r}"


def _events(lines: list[str]) -> tuple[str, str, str | None]:
    event, data, event_id = "", "", None
    for line in lines:
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
    return event, data, event_id


class Load:
    """`clients` concurrent clients, one session each, one turn at a time, for `seconds`.

    With `deadline_seconds`, a request (a new turn or a resume, from sending it to the end of its
    answer) still running after that long is cut by the client and recorded in `overdue`: a store
    that hangs must make requests fail or finish, never wait on it."""

    def __init__(self, bases: list[str], *, clients: int, think_seconds: float = 0.0,
                 headers: dict[str, str] | None = None, deadline_seconds: float | None = None):
        self.bases = bases
        self.clients = clients
        self.think_seconds = think_seconds
        self.deadline_seconds = deadline_seconds
        self.outcome = Outcome()
        self.stopped = False  # stop(): each client ends after its current turn
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=2.0), headers=headers,
                                      limits=httpx.Limits(max_connections=clients * 2 + 8))

    async def run(self, seconds: float, *, sample_readyz: bool = False) -> Outcome:
        stop_at = time.monotonic() + seconds
        sampler = asyncio.create_task(self._sample_readyz(stop_at)) if sample_readyz else None
        try:
            await asyncio.gather(*(self._client(k, stop_at) for k in range(self.clients)))
        finally:
            if sampler is not None:
                await sampler
        return self.outcome

    def stop(self) -> None:
        self.stopped = True

    async def close(self) -> None:
        await self.http.aclose()

    async def _sample_readyz(self, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            for base in self.bases:
                try:
                    resp = await self.http.get(f"{base}/readyz", timeout=3.0)
                    self.outcome.readyz[resp.status_code] += 1
                except httpx.TransportError:
                    self.outcome.readyz[0] += 1
            await asyncio.sleep(0.2)

    async def _client(self, k: int, stop_at: float) -> None:
        session_id = f"drill-{k}-{uuid.uuid4().hex[:8]}"
        n = 0
        while time.monotonic() < stop_at and not self.stopped:
            n += 1
            await self._turn(session_id, f"{session_id} message {n}")
            if self.think_seconds:
                await asyncio.sleep(random.uniform(0, self.think_seconds))

    async def _turn(self, session_id: str, message: str) -> None:
        body = {"message": message, "session_id": session_id, "chatbot_id": "support", "stream": True}
        acked: list[Acked] = []
        last_id: list[str] = []
        self.outcome.requests += 1
        try:
            async with self._deadline(f"new turn {message!r}"), \
                    self.http.stream("POST", f"{random.choice(self.bases)}/api/v1/query", json=body) as resp:
                self._note_connection(resp)
                if resp.status_code == 503:
                    self.outcome.refused_codes[_error_code(await resp.aread())] += 1
                    self.outcome.refused += 1
                    if not resp.headers.get("retry-after"):
                        self.outcome.refused_without_retry_after += 1
                    await asyncio.sleep(0.2)
                    return
                if resp.status_code != 200:
                    self.outcome.unexpected.append(f"new turn: {resp.status_code} {(await resp.aread())[:200]!r}")
                    return
                if await self._read(resp, session_id, message, acked, last_id):
                    return
        except (httpx.TransportError, TimeoutError) as e:
            if not acked:
                self.outcome.unacknowledged_breaks += 1
                self.outcome.break_kinds[type(e).__name__] += 1
                self.outcome.break_times.append(time.time())
                return
        if acked:
            await self._resume(acked[0], last_id)

    @contextlib.asynccontextmanager
    async def _deadline(self, what: str) -> AsyncIterator[None]:
        """Cut the request after `deadline_seconds` (TimeoutError, noted in `overdue`)."""
        if self.deadline_seconds is None:
            yield
            return
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.deadline_seconds):
                yield
        except TimeoutError:
            self.outcome.overdue.append(what)
            raise
        finally:
            self.outcome.slowest_seconds = max(self.outcome.slowest_seconds, time.monotonic() - started)

    def _note_connection(self, resp: httpx.Response) -> None:
        if resp.headers.get("connection", "").lower() == "close":
            self.outcome.connection_close += 1

    async def _read(self, resp: httpx.Response, session_id: str, message: str, acked: list[Acked],
                    last_id: list[str]) -> bool:
        """Read SSE events; True when the answer is done, False when it broke (resume it)."""
        lines: list[str] = []
        async for line in resp.aiter_lines():
            if line:
                lines.append(line)
                continue
            event, data, event_id = _events(lines)
            lines = []
            payload = orjson.loads(data) if data else {}
            if event == "start":
                turn = Acked(session_id, message, int(payload["turn_seq"]))
                acked.append(turn)
                self.outcome.acked.append(turn)
            elif event == "chunk":
                acked[0].shown += payload["delta"]
                last_id[:] = [event_id or ""]
            elif event == "done":
                acked[0].done = True
                return True
            elif event == "error":
                self.outcome.stream_error_codes[str(payload.get("error", {}).get("code"))] += 1
                if payload.get("error", {}).get("code") not in ("store_unavailable", "unavailable", "draining"):
                    self.outcome.unexpected.append(f"stream error: {payload}")
                return False
        return False

    async def _resume(self, turn: Acked, last_id: list[str]) -> None:
        body = {"message": turn.message, "session_id": turn.session_id, "chatbot_id": "support", "stream": True}
        deadline = time.monotonic() + RESUME_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            turn.resumes += 1
            self.outcome.requests += 1
            headers = {"Last-Event-ID": last_id[0] if last_id else f"{turn.turn_seq}:-1"}
            try:
                async with self._deadline(f"resume of {turn}"), \
                        self.http.stream("POST", f"{random.choice(self.bases)}/api/v1/query", json=body,
                                         headers=headers) as resp:
                    self._note_connection(resp)
                    if resp.status_code in (503, 502):
                        await resp.aread()
                        continue
                    if resp.status_code != 200:
                        self.outcome.unexpected.append(f"resume: {resp.status_code} {(await resp.aread())[:200]!r}")
                        return
                    if await self._read(resp, turn.session_id, turn.message, [turn], last_id):
                        return
            except (httpx.TransportError, TimeoutError):
                continue
        self.outcome.unexpected.append(f"answer never completed: {turn}")


async def audit(base: str, acked: list[Acked], headers: dict[str, str] | None = None) -> dict[str, int]:
    """Every acknowledged turn exactly once, in order, whole; no sequence number issued twice."""
    by_session: dict[str, list[Acked]] = {}
    for turn in acked:
        by_session.setdefault(turn.session_id, []).append(turn)
    stored_turns = retries = 0
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        for session_id, turns in by_session.items():
            resp, retried = await _get_retrying(http, f"{base}/api/v1/sessions/{session_id}")
            retries += retried
            assert resp.status_code == 200, (session_id, resp.status_code, resp.text[:300])
            history = resp.json()["turns"]
            stored_turns += len(history)
            seqs = [t["seq"] for t in history]
            assert seqs == sorted(set(seqs)), f"{session_id}: sequence numbers out of order or reused: {seqs}"
            at = {t["seq"]: t for t in history}
            users = Counter(t["content"] for t in history if t["role"] == "user")
            assert [t.turn_seq for t in turns] == sorted({t.turn_seq for t in turns}), \
                f"{session_id}: acknowledged turn_seq values reused or out of order: {[t.turn_seq for t in turns]}"
            for turn in turns:
                assert turn.done, f"acknowledged turn never completed: {turn}"
                expected = f"echo: {turn.message}"
                assert turn.shown == expected, f"client was shown {turn.shown!r}, expected {expected!r}"
                user, answer = at.get(turn.turn_seq - 1), at.get(turn.turn_seq)
                assert user is not None and (user["role"], user["content"]) == ("user", turn.message), \
                    f"{session_id}: user turn of {turn} missing: {history}"
                assert answer is not None and (answer["role"], answer["content"]) == ("assistant", expected), \
                    f"{session_id}: answer of {turn} missing or wrong: {history}"
                assert users[turn.message] == 1, f"{session_id}: {turn.message!r} stored {users[turn.message]} times"
    return {"sessions": len(by_session), "stored_turns": stored_turns, "retries": retries}


async def _get_retrying(http: httpx.AsyncClient, url: str, patience_seconds: float = 60.0
                            ) -> tuple[httpx.Response, int]:
    """A GET retried as any HTTP client retries a read: after a dropped connection (a proxy in front
    of a pod that was just replaced) and after a 503 with Retry-After (a store the answering pod
    briefly lost). Neither says anything about what was stored, which is what the audit checks.
    Returns the last answer and how many tries it took past the first."""
    deadline = time.monotonic() + patience_seconds
    tries = 0
    while True:
        try:
            resp = await http.get(url)
            retry_after = resp.headers.get("retry-after") if resp.status_code == 503 else None
            if retry_after is None or time.monotonic() > deadline:
                return resp, tries
            await asyncio.sleep(min(float(retry_after), 5.0))
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5 * min(tries + 1, 4))
        tries += 1


async def pools_settle(runtimes: list[RuntimeProcess], backend: str = "redis") -> list[dict[str, Any]]:
    """Wait (bounded) until no pooled connection is in use on any runtime; the pools as last seen."""
    pools: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(50):
            pools = []
            for runtime in runtimes:
                body = (await http.get(f"{runtime.base_url}/readyz")).json()
                pools.append(body["backends"][backend].get("pool", {}))
            if all(p.get("inUse", 0) == 0 for p in pools):
                return pools
            await asyncio.sleep(0.2)
    return pools


async def wait_ready(runtimes: list[RuntimeProcess], timeout: float = 30.0) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        deadline = time.monotonic() + timeout
        for runtime in runtimes:
            while (await http.get(f"{runtime.base_url}/readyz")).status_code != 200:
                assert time.monotonic() < deadline, f"runtime not ready again:\n{runtime.logs()}"
                await asyncio.sleep(0.2)


async def end_kill_drill(killer: asyncio.Task[Any], client: Any, http: httpx.AsyncClient, *processes: Any) -> None:
    """A kill -9 drill's tear-down: stop the killer, close the clients, stop every process."""
    killer.cancel()
    with contextlib.suppress(BaseException):
        await killer
    await client.close()
    await http.aclose()
    for process in processes:
        process.stop()
