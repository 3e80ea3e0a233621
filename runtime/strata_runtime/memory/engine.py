"""The memory engine: one object that moves session state between L1, L2, SQL spill and L3.

Load order: L1 (no I/O) → L2 (one pipelined round trip) → SQL spill (then restored into L2)
→ a new, empty session. Every L2 operation falls back to the in-process store while Redis is
unreachable (`auto` backend), so a turn is always durable *somewhere* before the LLM is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError

from strata_runtime.config import MemoryConfig
from strata_runtime.embeddings.contract import EmbeddingUnavailable
from strata_runtime.gateway.contract import CallContext, ChatGateway
from strata_runtime.memory.l1 import L1Pool
from strata_runtime.memory.l2 import MemorySessionStore, RedisSessionStore, SessionStore
from strata_runtime.memory.l3 import LongTermMemory, Memory
from strata_runtime.memory.retrieval import needs_long_term, summary_request
from strata_runtime.memory.spill import SpillStore
from strata_runtime.memory.state import SessionState, Turn, batch_id
from strata_runtime.stores.redis import RedisConnector

log = logging.getLogger("strata.memory")

T = TypeVar("T")
_REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


class MemoryEngine:
    def __init__(self, config: MemoryConfig, redis: RedisConnector, spill: SpillStore,
                 long_term: LongTermMemory | None, *, on_l1_size: Callable[[int], None] | None = None):
        self.config = config
        self.redis = redis
        self.spill_store = spill
        self.long_term = long_term
        self.l1 = L1Pool(config.l1_max_sessions, on_l1_size)
        self.memory_store = MemorySessionStore()
        self._redis_store: RedisSessionStore | None = None
        self._redis_client: Any = None
        self._archive_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._idle_task: asyncio.Task[None] | None = None
        self.archives_done = 0

    # ----------------------------------------------------------------------------- L2 selection

    def store(self) -> SessionStore:
        client = self.redis.client
        if client is None:
            return self.memory_store
        if client is not self._redis_client:
            self._redis_store = RedisSessionStore(client, self.redis.prefix)
            self._redis_client = client
        assert self._redis_store is not None
        return self._redis_store

    async def l2(self, op: Callable[[SessionStore], Awaitable[T]]) -> T:
        store = self.store()
        try:
            return await op(store)
        except _REDIS_FAILURES as e:
            if store is self.memory_store:
                raise
            self.redis.report_failure(e)
            log.warning("redis failed during a session write; using the in-process store",
                        extra={"error": type(e).__name__})
            return await op(self.memory_store)

    @property
    def ttl(self) -> int:
        return self.config.checkpoint_ttl_seconds

    # ----------------------------------------------------------------------------- loading

    async def session(self, tenant: str, session_id: str, agent_id: str) -> SessionState:
        state = self.l1.get(tenant, session_id)
        if state is not None:
            return state
        return await self.reload(tenant, session_id, agent_id)

    async def reload(self, tenant: str, session_id: str, agent_id: str) -> SessionState:
        state = await self.l2(lambda s: s.load(tenant, session_id))
        if state is None:
            state = await self.spill_store.load(tenant, session_id)
            if state is not None:
                restored = state
                await self.l2(lambda s: s.restore(restored, ttl=self.ttl))
                state = await self.l2(lambda s: s.load(tenant, session_id)) or state
        if state is None:
            state = SessionState(tenant=tenant, session_id=session_id, agent_id=agent_id)
        if not state.agent_id:
            state.agent_id = agent_id
        self._evicted(self.l1.put(state))
        return state

    async def peek(self, tenant: str, session_id: str) -> SessionState | None:
        """The session if it exists anywhere, without creating it (for reads)."""
        state = await self.l2(lambda s: s.load(tenant, session_id))
        if state is None:
            state = await self.spill_store.load(tenant, session_id)
        return state

    # ----------------------------------------------------------------------------- a turn

    async def append_user(self, state: SessionState, content: str, turn_id: str, *, prompt: bytes, model: str,
                          owner: str) -> Turn | None:
        """Make the user turn durable (and open the assistant turn's stream record) in one write.

        Returns None when another pod advanced the session (our L1 copy was stale): `state` is
        then refreshed from L2 and the caller rebuilds its prompt and tries again.
        """
        turn = Turn(seq=state.next_seq, role="user", content=content, ts=time.time(), turn_id=turn_id)
        ok, _ = await self.l2(
            lambda s: s.append_user(state, turn, prompt=prompt, model=model, owner=owner, ttl=self.ttl))
        if ok:
            state.turns[turn.seq] = turn
            state.next_seq = max(state.next_seq, turn.seq + 2)
            state.pending.add(turn.seq + 1)
            return turn
        fresh = await self.reload(state.tenant, state.session_id, state.agent_id)
        state.__dict__.update(fresh.__dict__)
        self.l1.put(state)
        return None

    async def flush_chunks(self, state: SessionState, seq: int, *, owner: str, start: int,
                           chunks: list[str]) -> bool:
        return await self.l2(lambda s: s.flush_chunks(state.tenant, state.session_id, seq, owner=owner,
                                                      start=start, chunks=chunks, ttl=self.ttl))

    async def complete(self, state: SessionState, seq: int, content: str, *, owner: str) -> Turn | None:
        turn = Turn(seq=seq, role="assistant", content=content, ts=time.time())
        stored = await self.l2(lambda s: s.complete(state.tenant, state.session_id, turn, owner=owner,
                                                    ttl=self.ttl))
        if stored is not None:
            state.turns[seq] = stored
            state.pending.discard(seq)
        return stored

    async def fail(self, state: SessionState, seq: int, *, owner: str, error: str) -> None:
        await self.l2(lambda s: s.fail(state.tenant, state.session_id, seq, owner=owner, error=error,
                                       ttl=self.ttl))
        state.turns.pop(seq - 1, None)
        state.pending.discard(seq)

    # ----------------------------------------------------------------------------- L3

    async def recall(self, state: SessionState, message: str, *, channel: str | None) -> list[Memory]:
        if self.long_term is None or not self.config.long_term.enabled or not needs_long_term(message, state):
            return []
        try:
            return await self.long_term.search(tenant=state.tenant, agent_id=state.agent_id, query=message,
                                               limit=self.config.long_term.top_k, channel=channel)
        except EmbeddingUnavailable:
            return []
        except Exception:
            log.warning("long-term recall failed; answering without it", exc_info=True)
            return []

    def archive_due(self, state: SessionState) -> bool:
        return len(state.complete_prefix()) >= self.config.buffer_turns

    async def archive(self, state: SessionState, gateway: ChatGateway, model: str, ctx: CallContext) -> bool:
        """Summarise the first `bufferTurns` complete turns, upsert them to L3, then trim L2.

        Idempotent end to end: the batch id is a hash of (tenant, agent, session, first, last seq),
        the vector write is an upsert, the SQL history insert ignores conflicts and the trim is a
        compare-and-set on `archived_upto`, so a retry (or another pod) racing it leaves one row.
        """
        key = (state.tenant, state.session_id)
        lock = self._archive_locks.setdefault(key, asyncio.Lock())
        async with lock:
            batch = state.complete_prefix()[: self.config.buffer_turns]
            if len(batch) < self.config.buffer_turns:
                return False
            first, last = batch[0].seq, batch[-1].seq
            bid = batch_id(state.tenant, state.agent_id, state.session_id, first, last)
            result = await gateway.complete(summary_request(model, state.summary, [t.public() for t in batch]), ctx)
            summary = str(result.response["choices"][0]["message"].get("content") or "").strip()
            if self.long_term is not None and self.config.long_term.enabled:
                await self.long_term.upsert(row_id=bid, tenant=state.tenant, agent_id=state.agent_id,
                                            channel=ctx.channel_id or "", kind="conversation", content=summary,
                                            source="session-archive", session_id=state.session_id,
                                            extra={"first_seq": first, "last_seq": last})
            await self.spill_store.record_batch(state, bid, batch)
            trimmed = await self.l2(lambda s: s.trim(state.tenant, state.session_id, last_seq=last,
                                                     summary=summary, ttl=self.ttl))
            if trimmed:
                for t in batch:
                    state.turns.pop(t.seq, None)
                state.summary = summary
                state.archived_upto = last
                state.archived_batches += 1
                self.archives_done += 1
            else:
                fresh = await self.reload(state.tenant, state.session_id, state.agent_id)
                state.__dict__.update(fresh.__dict__)
            return trimmed

    # ----------------------------------------------------------------------------- release

    async def release(self, state: SessionState, *, drop_l2: bool = True) -> None:
        """Spill the partial buffer to SQL; drop the L2 keys unless someone moved the session on."""
        if state.pending:
            return
        await self.spill_store.spill(state)
        self.l1.pop(state.tenant, state.session_id)
        if drop_l2:
            with contextlib.suppress(*_REDIS_FAILURES):
                await self.l2(lambda s: s.release(state.tenant, state.session_id, next_seq=state.next_seq))

    def _evicted(self, states: list[SessionState]) -> None:
        for state in states:
            self.spawn(self._spill_quietly(state))

    async def _spill_quietly(self, state: SessionState) -> None:
        try:
            await self.spill_store.spill(state)
        except Exception:
            log.warning("spilling an evicted session failed; it stays in L2", exc_info=True)

    async def release_idle(self, busy: Callable[[SessionState], bool]) -> int:
        released = 0
        for state in self.l1.idle(self.config.session_idle_seconds):
            if busy(state):
                continue
            try:
                await self.release(state)
                released += 1
            except Exception:
                log.warning("releasing an idle session failed", exc_info=True)
        return released

    # ----------------------------------------------------------------------------- reads, deletes

    async def history(self, tenant: str, session_id: str) -> dict[str, Any] | None:
        state = await self.peek(tenant, session_id)
        archived = await self.spill_store.archived_turns(tenant, session_id)
        if state is None and not archived:
            return None
        buffered = [t.public() for t in state.buffered()] if state else []
        seen = {t["seq"] for t in buffered}
        turns = sorted([t for t in archived if t["seq"] not in seen] + buffered, key=lambda t: t["seq"])
        return {"session_id": session_id, "agent_id": state.agent_id if state else "",
                "summary": state.summary if state else "", "turns": turns,
                "pending": sorted(state.pending) if state else [],
                "archived_batches": state.archived_batches if state else 0}

    async def delete(self, tenant: str, session_id: str) -> bool:
        self.l1.pop(tenant, session_id)
        in_l2 = await self.l2(lambda s: s.delete(tenant, session_id))
        in_sql = await self.spill_store.delete(tenant, session_id)
        if self.long_term is not None:
            with contextlib.suppress(Exception):
                await self.long_term.delete_session(tenant, session_id)
        return in_l2 or in_sql

    # ----------------------------------------------------------------------------- lifecycle

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def start_idle_loop(self, busy: Callable[[SessionState], bool]) -> None:
        interval = max(1.0, min(30.0, self.config.session_idle_seconds / 2))

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                await self.release_idle(busy)

        self._idle_task = asyncio.create_task(loop(), name="memory-idle-release")

    async def shutdown(self, grace_seconds: float) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle_task
        if self._background:
            await asyncio.wait(list(self._background), timeout=grace_seconds)
        for state in self.l1.all():
            if not state.pending:
                with contextlib.suppress(Exception):
                    await self.spill_store.spill(state)
