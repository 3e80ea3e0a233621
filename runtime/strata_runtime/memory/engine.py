"""The memory engine: one object that moves session state between L1, L2, SQL spill and L3.

Load order: L1 (no I/O) → L2 (one pipelined round trip) → SQL spill (then restored into L2)
→ a new, empty session. A session lives in Redis whenever Redis is configured, and a turn is
acknowledged only once it is written there (docs/durability.md). While Redis (or, for a
session that is not in Redis, the SQL spill) cannot be reached, the operation raises
``StoreUnavailable`` (503 + Retry-After): there is no in-process fallback for sessions, because
a session written to one pod's memory forks from the copy every other pod (and this pod, once
Redis is back) reads, and its sequence numbers would be issued twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from strata_runtime import tracing
from strata_runtime.config import MemoryConfig
from strata_runtime.embeddings.contract import EmbeddingUnavailable
from strata_runtime.gateway.contract import CallContext, ChatGateway
from strata_runtime.memory.l1 import L1Pool
from strata_runtime.memory.l2 import MemorySessionStore, RedisSessionStore, SessionStore
from strata_runtime.memory.l3 import LongTermMemory, Memory
from strata_runtime.memory.retrieval import needs_long_term, summary_request, summary_text
from strata_runtime.memory.spill import ParkedBatch, SpillStore
from strata_runtime.memory.state import SessionState, Turn, batch_id
from strata_runtime.stores.health import StoreUnavailable
from strata_runtime.stores.redis import RedisConnector, is_redis_failure

log = logging.getLogger("strata.memory")

T = TypeVar("T")
ARCHIVE_BACKOFF_CAP_SECONDS = 600.0
# Re-drive of parked archive batches (see `redrive_parked`): a pass every few seconds, at most
# REDRIVE_PER_PASS batches per pass (read REDRIVE_PAGE at a time), stopping at the first failure;
# a session's batches that still need their summary made, at most PARKED_PER_ARCHIVE per archive run.
REDRIVE_INTERVAL_SECONDS = 5.0
REDRIVE_PAGE = 32
REDRIVE_PER_PASS = 512
REDRIVE_LEASE_SECONDS = 60.0  # a claimed batch is skipped by other pods' passes for this long
PARKED_PER_ARCHIVE = 2


class MemoryEngine:
    def __init__(self, config: MemoryConfig, redis: RedisConnector, spill: SpillStore,
                 long_term: LongTermMemory | None, *, on_l1_size: Callable[[int], None] | None = None,
                 on_archive: Callable[[str, str], None] | None = None,
                 on_parked: Callable[[int], None] | None = None):
        self.config = config
        self.redis = redis
        self.spill_store = spill
        self.long_term = long_term
        self.l1 = L1Pool(config.l1_max_sessions, on_l1_size)
        self.memory_store = MemorySessionStore(resume_window=config.resume_window_seconds)
        self._redis_store: RedisSessionStore | None = None
        self._redis_client: Any = None
        # Sessions with an archive in flight on this pod, each set when it ends: a delete waits for it.
        self._archiving: dict[tuple[str, str], asyncio.Event] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._idle_task: asyncio.Task[None] | None = None
        self._redrive_task: asyncio.Task[None] | None = None
        self._on_archive = on_archive  # (outcome: parked | redriven | redrive_failed, reason)
        self._on_parked = on_parked  # parked batches in SQL, after each re-drive pass

    # ----------------------------------------------------------------------------- L2 selection

    def store(self) -> SessionStore:
        """Redis when it is configured (StoreUnavailable while it is out), else the process's memory."""
        if not self.redis.holds_sessions:
            return self.memory_store
        client = self.redis.session_client()
        if client is not self._redis_client:
            self._redis_store = RedisSessionStore(client, self.redis.prefix,
                                                  resume_window=self.config.resume_window_seconds)
            self._redis_client = client
        assert self._redis_store is not None
        return self._redis_store

    async def l2(self, op: Callable[[SessionStore], Awaitable[T]]) -> T:
        store = self.store()
        if store is self.memory_store:
            return await tracing.traced("memory.l2", op(store))
        try:
            result = await tracing.traced("memory.l2", op(store))
        except Exception as e:
            if not is_redis_failure(e):
                raise
            self.redis.report_failure(e)
            log.warning("session store (redis) failed; refusing the request rather than forking the session",
                        extra={"error": type(e).__name__})
            raise StoreUnavailable("session store (Redis) unreachable; retry shortly",
                                   retry_after_seconds=self.redis.config.recover_interval_seconds) from e
        self.redis.report_success()
        return result

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
                          owner: str, routing: dict[str, Any] | None = None) -> Turn | None:
        """Make the user turn durable (and open the assistant turn's stream record) in one write.

        Returns None when another pod advanced the session (our L1 copy was stale): `state` is
        then refreshed from L2 and the caller rebuilds its prompt and tries again.
        """
        turn = Turn(seq=state.next_seq, role="user", content=content, ts=time.time(), turn_id=turn_id,
                    routing=routing)
        ok, _ = await self._write(state, lambda s: s.append_user(state, turn, prompt=prompt, model=model, owner=owner,
                                                                 ttl=self.ttl))
        if ok:
            state.turns[turn.seq] = turn
            state.next_seq = max(state.next_seq, turn.seq + 2)
            state.pending.add(turn.seq + 1)
            return turn
        fresh = await self.reload(state.tenant, state.session_id, state.agent_id)
        state.adopt(fresh)
        self.l1.put(state)
        return None

    async def _write(self, state: SessionState, op: Callable[[SessionStore], Awaitable[T]]) -> T:
        """A write of the session's turns. When it fails, it may have been applied with its reply
        lost (Redis killed or the connection cut after the script ran), so this pod's copy of the
        session no longer matches Redis: the copy is dropped from L1 and the session's next request
        reads it from Redis. (Kept, a turn pending in the copy but done in Redis stopped every
        later archive of the session: its buffer grew without bound.)"""
        try:
            return await self.l2(op)
        except BaseException:
            self.l1.pop(state.tenant, state.session_id)
            raise

    async def flush_chunks(self, state: SessionState, seq: int, *, owner: str, start: int,
                           chunks: list[str]) -> bool:
        return await self._write(state, lambda s: s.flush_chunks(state.tenant, state.session_id, seq, owner=owner,
                                                                 start=start, chunks=chunks, ttl=self.ttl))

    async def complete(self, state: SessionState, seq: int, content: str, *, owner: str) -> Turn | None:
        turn = Turn(seq=seq, role="assistant", content=content, ts=time.time())
        stored = await self._write(state, lambda s: s.complete(state.tenant, state.session_id, turn, owner=owner,
                                                               ttl=self.ttl))
        if stored is not None:
            state.turns[seq] = stored
            state.pending.discard(seq)
        else:  # another pod took the turn over: it, not this copy, knows how the session went on
            self.l1.pop(state.tenant, state.session_id)
        return stored

    async def fail(self, state: SessionState, seq: int, *, owner: str, error: str) -> None:
        await self._write(state, lambda s: s.fail(state.tenant, state.session_id, seq, owner=owner, error=error,
                                                  ttl=self.ttl))
        state.turns.pop(seq - 1, None)
        state.pending.discard(seq)

    # ----------------------------------------------------------------------------- L3

    async def recall(self, state: SessionState, message: str, *, channel: str | None) -> list[Memory]:
        if self.long_term is None or not self.config.long_term.enabled or not needs_long_term(message, state):
            return []
        try:
            return await tracing.traced("memory.recall", self.long_term.search(
                tenant=state.tenant, agent_id=state.agent_id, query=message, limit=self.config.long_term.top_k,
                channel=channel))
        except (EmbeddingUnavailable, StoreUnavailable):  # expected while either is out; readiness says so
            return []
        except Exception:
            log.warning("long-term recall failed; answering without it", exc_info=True)
            return []

    def archive_due(self, state: SessionState) -> bool:
        return len(state.complete_prefix()) >= self.config.buffer_turns

    async def maintain(self, state: SessionState, gateway: ChatGateway, model: str, ctx: CallContext) -> None:
        """After a completed turn: archive what is due, keep the buffer under its cap.

        Back-pressure: one archive per session at a time on this pod; a failed archive backs
        off (doubling from `archiveRetrySeconds`) and is retried only when a later turn
        completes, so no LLM call happens once clients stop. After `archiveMaxAttempts` a batch
        goes to the SQL history without a summary, and anything above `maxBufferTurns` goes
        there at once: the oldest turns are moved, never dropped. Such a batch is parked
        (`strata_archive_parked`) and its long-term summary re-driven later: by the background
        pass when its summary was made (no LLM call), else here, on the session's next archive.
        """
        key = (state.tenant, state.session_id)
        if key in self._archiving:
            return
        ended = self._archiving[key] = asyncio.Event()
        try:
            archived = await self._archive_due(state, gateway, model, ctx)
            excess = len(state.complete_prefix()) - self.config.buffer_cap
            if excess > 0:
                await self._move_to_history(state, excess, "buffer_cap", ctx.channel_id or "")
            if archived:  # the summary call and the vector store both just worked
                await self._redrive_session(state, gateway, model, ctx)
        finally:
            del self._archiving[key]
            ended.set()

    async def _archive_due(self, state: SessionState, gateway: ChatGateway, model: str, ctx: CallContext) -> bool:
        """Archive the due batches; whether the last attempt succeeded."""
        archived = False
        while self.archive_due(state) and time.monotonic() >= state.archive.retry_at:
            try:
                archived = await self.archive(state, gateway, model, ctx)
                if not archived:
                    return False
            except Exception as e:  # the summary call, the embedder, L3, SQL: all retried the same way
                archived = False
                self._archive_failed(state, e)
                if state.archive.failures < self.config.archive_max_attempts:
                    return False
                await self._move_to_history(state, self.config.buffer_turns, "archive_failed", ctx.channel_id or "")
        return archived

    def _archive_failed(self, state: SessionState, error: BaseException) -> None:
        progress = state.archive
        progress.failures += 1
        delay = min(ARCHIVE_BACKOFF_CAP_SECONDS, self.config.archive_retry_seconds * 2 ** (progress.failures - 1))
        progress.retry_at = time.monotonic() + delay * random.uniform(0.8, 1.2)
        log.warning("archiving a session batch failed; backing off",
                    extra={"session_id": state.session_id, "failures": progress.failures,
                           "retry_in_seconds": round(delay, 1), "error": f"{type(error).__name__}: {error}"[:300]})

    async def archive(self, state: SessionState, gateway: ChatGateway, model: str, ctx: CallContext) -> bool:
        """Summarise the first `bufferTurns` complete turns, upsert them to L3, then trim L2.

        Idempotent end to end: the batch id is a hash of (tenant, agent, session, first, last seq),
        the vector write is an upsert, the SQL history insert ignores conflicts and the trim is a
        compare-and-set on `archived_upto`, so a retry (or another pod) racing it leaves one row.
        """
        batch = state.complete_prefix()[: self.config.buffer_turns]
        if len(batch) < self.config.buffer_turns:
            return False
        first, last = batch[0].seq, batch[-1].seq
        bid = batch_id(state.tenant, state.agent_id, state.session_id, first, last)
        draft = state.archive.draft
        if draft is not None and draft[0] == bid:
            summary = draft[1]
        else:
            result = await gateway.complete(summary_request(model, state.summary, [t.public() for t in batch]), ctx)
            summary = summary_text(result.response)
            state.archive.draft = (bid, summary)
        if self.long_term is not None and self.config.long_term.enabled:
            await self.long_term.upsert(row_id=bid, tenant=state.tenant, agent_id=state.agent_id,
                                        channel=ctx.channel_id or "", kind="conversation", content=summary,
                                        source="session-archive", session_id=state.session_id,
                                        extra={"first_seq": first, "last_seq": last}, background=True)
        trimmed = await self._record_and_trim(state, bid, batch, summary)
        state.archive.failures, state.archive.retry_at, state.archive.draft = 0, 0.0, None
        return trimmed

    async def _move_to_history(self, state: SessionState, count: int, reason: str, channel: str) -> None:
        """Move the oldest `count` complete turns to the SQL history and park their long-term summary.

        The summary already made for exactly this batch (the LLM answered, the vector store did not)
        is kept with the parked row and becomes the session's running summary."""
        batch = state.complete_prefix()[:count]
        if not batch:
            return
        bid = batch_id(state.tenant, state.agent_id, state.session_id, batch[0].seq, batch[-1].seq)
        draft = state.archive.draft
        made = draft[1] if draft is not None and draft[0] == bid else None
        log.warning("moving turns to the SQL history; their long-term summary is parked",
                    extra={"session_id": state.session_id, "turns": len(batch), "reason": reason,
                           "summary_made": made is not None})
        await self.spill_store.record_batch(state, bid, batch)
        if self._long_term_on():
            await self.spill_store.park(state, bid, batch, channel=channel, summary=made, reason=reason)
            self._note("parked", reason)
        await self._trim(state, batch, state.summary if made is None else made)
        state.archive.failures, state.archive.retry_at, state.archive.draft = 0, 0.0, None

    async def _record_and_trim(self, state: SessionState, bid: str, batch: list[Turn], summary: str) -> bool:
        await self.spill_store.record_batch(state, bid, batch)
        return await self._trim(state, batch, summary)

    async def _trim(self, state: SessionState, batch: list[Turn], summary: str) -> bool:
        last = batch[-1].seq
        seqs = [t.seq for t in batch]
        trimmed = await self._write(state, lambda s: s.trim(state.tenant, state.session_id, seqs=seqs,
                                                            summary=summary, ttl=self.ttl))
        if trimmed:
            for t in batch:
                state.turns.pop(t.seq, None)
            state.summary = summary
            state.archived_upto = last
            state.archived_batches += 1
        else:
            fresh = await self.reload(state.tenant, state.session_id, state.agent_id)
            state.adopt(fresh)
        return trimmed

    # ----------------------------------------------------------------------------- parked archives

    def _long_term_on(self) -> bool:
        return self.long_term is not None and self.config.long_term.enabled

    def _note(self, outcome: str, reason: str) -> None:
        if self._on_archive is not None:
            self._on_archive(outcome, reason)

    async def redrive_parked(self) -> int:
        """One bounded pass over parked batches whose summary is made: write it to the vector store.

        Only while the vector store is healthy (never into the pod-local fallback of `auto`); the
        first failure backs that batch off (doubling from `archiveRetrySeconds`, capped) and ends
        the pass. No LLM call happens here. Returns the batches re-driven."""
        if self.long_term is None or not self.config.long_term.enabled:
            return 0
        done = 0
        while done < REDRIVE_PER_PASS and self.long_term.vectors.health.state == "ok":
            due = await self.spill_store.claim_due(min(REDRIVE_PAGE, REDRIVE_PER_PASS - done), REDRIVE_LEASE_SECONDS)
            for i, batch in enumerate(due):
                assert batch.summary is not None
                if not await self._redrive(batch, batch.summary):
                    await self._release_claims(due[i + 1:])
                    return done
                done += 1
            if len(due) < REDRIVE_PAGE:
                break
        return done

    async def _release_claims(self, batches: list[ParkedBatch]) -> None:
        for batch in batches:  # not tried in this pass: due again at the next one, with no extra back-off
            await self.spill_store.back_off(batch, 0.0, count=False)

    async def _redrive(self, batch: ParkedBatch, summary: str) -> bool:
        assert self.long_term is not None
        try:
            await self.long_term.upsert(row_id=batch.batch_id, tenant=batch.tenant, agent_id=batch.agent_id,
                                        channel=batch.channel, kind="conversation", content=summary,
                                        source="session-archive", session_id=batch.session_id,
                                        extra={"first_seq": batch.first_seq, "last_seq": batch.last_seq},
                                        background=True)
        except Exception as e:  # the embedder or the vector store: the batch stays parked
            await self._back_off(batch, e)
            return False
        await self.spill_store.unpark(batch)
        self._note("redriven", batch.reason)
        return True

    async def _back_off(self, batch: ParkedBatch, error: BaseException) -> None:
        delay = min(ARCHIVE_BACKOFF_CAP_SECONDS, self.config.archive_retry_seconds * 2 ** batch.attempts)
        await self.spill_store.back_off(batch, delay * random.uniform(0.8, 1.2))
        self._note("redrive_failed", batch.reason)
        log.warning("re-driving a parked archive batch failed; backing off",
                    extra={"session_id": batch.session_id, "batch_id": batch.batch_id, "attempts": batch.attempts + 1,
                           "retry_in_seconds": round(delay, 1), "error": f"{type(error).__name__}: {error}"[:300]})

    async def _redrive_session(self, state: SessionState, gateway: ChatGateway, model: str,
                               ctx: CallContext) -> None:
        """Make the summaries of this session's parked batches that have none (an LLM call each, so
        only on the session's own activity), then write them like the background pass does."""
        if not self._long_term_on():
            return
        for batch in await self.spill_store.parked_unsummarised(state.tenant, state.session_id, PARKED_PER_ARCHIVE):
            turns = await self.spill_store.batch_turns(batch.tenant, batch.session_id, batch.batch_id)
            try:
                result = await gateway.complete(summary_request(model, "", turns), ctx)
            except Exception as e:  # the summary call failed: the batch waits for a later archive
                await self._back_off(batch, e)
                return
            summary = summary_text(result.response)
            await self.spill_store.keep_summary(batch, summary)
            if not await self._redrive(batch, summary):
                return

    def start_redrive_loop(self) -> None:
        if not self._long_term_on():
            return

        async def loop() -> None:
            while True:
                await asyncio.sleep(REDRIVE_INTERVAL_SECONDS)
                try:
                    await self.redrive_parked()
                    if self._on_parked is not None:
                        self._on_parked(await self.spill_store.parked_count())
                except StoreUnavailable:
                    pass  # SQL out: readiness says so; the next pass retries
                except Exception:
                    log.warning("a re-drive pass over parked archive batches failed", exc_info=True)

        self._redrive_task = asyncio.create_task(loop(), name="memory-archive-redrive")

    # ----------------------------------------------------------------------------- release

    async def release(self, state: SessionState, *, drop_l2: bool = True) -> None:
        """Spill the partial buffer to SQL; drop the L2 keys unless someone moved the session on."""
        if state.pending:
            return
        # The keys are dropped only if the session is still where the spill saw it: a turn that
        # runs on `state` while the spill is written moves `next_seq` on, and dropping the keys
        # then would leave a spill without that turn, whose sequence numbers would be reissued.
        spilled_next_seq = state.next_seq
        await self.spill_store.spill(state)
        self.l1.pop(state.tenant, state.session_id)
        if drop_l2:
            try:
                await self.l2(lambda s: s.release(state.tenant, state.session_id, next_seq=spilled_next_seq))
            except StoreUnavailable:
                # The spill is durable; the L2 copy just lives until its TTL.
                log.info("released a session whose redis keys could not be dropped",
                         extra={"session_id": state.session_id})

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
        by_seq = {t["seq"]: t for t in archived}
        by_seq.update((t.seq, t.public()) for t in (state.buffered() if state else []))
        turns = [by_seq[seq] for seq in sorted(by_seq)]
        return {"session_id": session_id, "agent_id": state.agent_id if state else "",
                "summary": state.summary if state else "", "turns": turns,
                "pending": sorted(state.pending) if state else [],
                "archived_batches": state.archived_batches if state else 0}

    async def delete(self, tenant: str, session_id: str) -> bool:
        archiving = self._archiving.get((tenant, session_id))
        if archiving is not None:
            # An archive in flight would write the turns it moves back to SQL after the delete.
            await archiving.wait()
        self.l1.pop(tenant, session_id)
        in_l2 = await self.l2(lambda s: s.delete(tenant, session_id))
        in_sql = await self.spill_store.delete(tenant, session_id)
        if self.long_term is not None:
            try:
                await self.long_term.delete_session(tenant, session_id)
            except Exception:
                log.warning("deleting a session's long-term memories failed; they remain searchable",
                            extra={"session_id": session_id}, exc_info=True)
        return in_l2 or in_sql

    # ----------------------------------------------------------------------------- lifecycle

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        """Background work handles the failures it expects; anything else is logged here, with its
        traceback (unlogged, it surfaced only as asyncio's "Task exception was never retrieved")."""
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background memory work failed", exc_info=error)

    def start_idle_loop(self, busy: Callable[[SessionState], bool]) -> None:
        interval = max(1.0, min(30.0, self.config.session_idle_seconds / 2))

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                await self.release_idle(busy)

        self._idle_task = asyncio.create_task(loop(), name="memory-idle-release")

    async def shutdown(self, grace_seconds: float) -> None:
        for task in (self._idle_task, self._redrive_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._background:
            await asyncio.wait(list(self._background), timeout=grace_seconds)
        for state in self.l1.all():
            if not state.pending:
                try:
                    await self.spill_store.spill(state)
                except StoreUnavailable:
                    log.warning("spilling a session at shutdown failed; it stays in redis until its TTL",
                                extra={"session_id": state.session_id})
