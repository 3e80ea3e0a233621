"""The conversation turn workflow: build the prompt → user turn durable → LLM via the gateway →
stream progress checkpointed → assistant turn durable → (write-behind) archive to L3.

Resumable streams. Each answer chunk is an event ``<assistant seq>:<chunk index>``. Chunks are
group-committed to L2 *before* they are shown to any client: the producer appends what arrived
while the previous write was in flight in one scripted round trip, then releases the batch to
readers. So whatever a client has seen is in Redis, and any pod can continue from it:

* the answer is complete → the remaining chunks come from the stored chunk list;
* the producing pod is alive → the new pod tails the chunk list in Redis;
* the producing pod died (no heartbeat for ``streamStaleSeconds``) → the new pod claims the
  stream (compare-and-set on the owner) and regenerates with the stored prompt. If the
  regenerated text starts with the already-delivered prefix (deterministic models,
  temperature 0, a cache hit), only what follows the prefix is delivered. Otherwise the model
  is asked to continue the delivered prefix, and its continuation is appended. Either way the
  client sees the stored prefix once, then new chunks: no gap, no duplicate.

A producer that lost its claim (a paused pod came back) stops writing: its flushes are
refused by the owner check, and its own readers switch to tailing Redis.

A nested turn (one that came with a depth and a call chain from an internal caller) keeps them
across a takeover: they are stored with its prompt, in the same write that makes the turn exist,
and the pod that takes it over continues at that depth, in that chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from strata_runtime.agents.depth import SessionDepth
from strata_runtime.agents.manager import Agent, AgentManager
from strata_runtime.errors import Conflict, Draining, NotFound, ServiceUnavailable, StrataError, UpstreamError
from strata_runtime.gateway.contract import CallContext, ChatGateway
from strata_runtime.memory.engine import MemoryEngine
from strata_runtime.memory.retrieval import build_messages
from strata_runtime.memory.state import SessionState, StreamInfo, Turn
from strata_runtime.routing.decision import RouteDecision
from strata_runtime.routing.prompt import system_prompt
from strata_runtime.stores.health import StoreUnavailable
from strata_runtime.tasks import finish, step_now
from strata_runtime.tools.loop import ToolLoop, TurnRef, answer_text

log = logging.getLogger("strata.agents")

CONTINUE_INSTRUCTION = (
    "Your previous answer was interrupted. Continue it exactly from where it stopped, without repeating "
    "anything already written and without any preamble."
)
POLL_SECONDS = 0.02
CALL_CHAIN_KEY = "strata_call_chain"  # in a stored prompt only: {depth, chain} of a nested turn


class Event:
    """One event of a turn (one per chunk per reader: slots, not a frozen dataclass's checked setattr)."""

    __slots__ = ("error", "index", "kind", "text")

    def __init__(self, kind: str, index: int, text: str = "", error: StrataError | None = None) -> None:
        self.kind = kind  # chunk | done | error
        self.index = index
        self.text = text
        self.error = error


def _deltas(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    return str((choices[0].get("delta") or {}).get("content") or "")


class Producer:
    """Produces one assistant turn on this pod and publishes its durable chunks to readers."""

    def __init__(self, conv: Conversations, state: SessionState, seq: int, *, body: dict[str, Any],
                 ctx: CallContext, prefix: list[str]):
        self.conv = conv
        self.engine = conv.engine
        self.state = state
        self.seq = seq
        self.body = body
        self.ctx = ctx
        self.durable: list[str] = list(prefix)
        self._queue: list[str] = []  # chunks not written yet
        self._writing: asyncio.Task[None] | None = None  # a write that had to wait (in flight, or just ended)
        self._readers: list[asyncio.Future[None]] = []  # readers waiting for the next durable chunks
        self._loop = asyncio.get_running_loop()
        self._beat: asyncio.TimerHandle | None = None  # the next heartbeat, or
        self._beating: asyncio.Task[None] | None = None  # the heartbeat being written
        self.finished = False
        self.lost = False
        self.turn: Turn | None = None
        self.error: StrataError | None = None
        self.first_chunk_at: float | None = None
        self.tools: TurnRef | None = None  # set when the agent has tools: the agent loop produces the turn
        self.task: asyncio.Task[None] | None = None

    # readers ---------------------------------------------------------------------------------
    def _notify(self) -> None:
        readers, self._readers = self._readers, []
        for reader in readers:
            if not reader.done():
                reader.set_result(None)

    async def follow(self, start: int) -> AsyncIterator[Event]:
        """The durable chunks from `start`, live, then `done` or `error` when the turn ended here;
        nothing more when the producer lost its claim (the caller goes on from Redis)."""
        i = start
        durable = self.durable
        while True:
            while i < len(durable):
                yield Event("chunk", i, durable[i])
                i += 1
            if self.finished:
                break
            waiter = self._loop.create_future()  # a bare future: no Event, no loop lookup per chunk
            self._readers.append(waiter)
            await waiter
        if self.turn is not None:
            yield Event("done", len(durable), self.turn.content)
        elif self.error is not None:
            yield Event("error", i, error=self.error)

    # production ------------------------------------------------------------------------------
    async def run(self) -> None:
        gateway = self.conv.gateway()
        self._arm_heartbeat()
        depth = self.conv.depth
        if depth is not None:
            depth.turn_started(self.state.tenant, self.state.session_id)
        try:
            if gateway is None:
                raise ServiceUnavailable("no LLM gateway is configured in this runtime")
            await self._produce(gateway)
        except StrataError as e:
            self.error = e
        except Exception as e:
            log.warning("LLM call for a conversation turn failed", exc_info=True)
            self.error = UpstreamError(f"the model call failed: {type(e).__name__}")
        finally:
            self._stop_heartbeat()
            self._stop_writing()
            if depth is not None:
                depth.turn_ended(self.state.tenant, self.state.session_id)
            if self.error is not None and not self.lost and not isinstance(self.error, (StoreUnavailable, Draining)):
                # A store outage or this pod shutting down is not the turn's failure: its record
                # stays `producing`, and a client resuming elsewhere gets it finished (taken over
                # once stale).
                await self._record_failure(self.error)
            self.finished = True
            self._notify()
            self.conv.producers.pop((self.state.tenant, self.state.session_id, self.seq), None)

    async def _produce(self, gateway: ChatGateway) -> None:
        """The model's answer, each piece queued and written as it comes (`_write_queued`), then the turn."""
        async for piece in self._generate(gateway):
            if self.lost:
                return
            if piece:
                self._queue.append(piece)
                self._write_queued()
        await self._write_rest()
        if self.lost:
            return
        self.turn = await self.engine.complete(self.state, self.seq, answer_text(self.durable), owner=self.conv.pod_id)
        if self.turn is None:
            self.lost = True
        else:
            self.conv.schedule_archive(self.state, self.ctx)

    async def _record_failure(self, error: StrataError) -> None:
        try:
            await self.engine.fail(self.state, self.seq, owner=self.conv.pod_id, error=error.message)
        except StoreUnavailable:
            log.warning("could not record a failed turn; it is finished by the next resume",
                        extra={"session_id": self.state.session_id, "seq": self.seq})

    async def _stream(self, gateway: ChatGateway, body: dict[str, Any]) -> AsyncIterator[str]:
        stream = await gateway.stream(body, self.ctx)
        iterator = stream.chunks
        try:
            async for chunk in iterator:
                text = _deltas(chunk)
                if text:
                    yield text
        finally:
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    def _source(self, gateway: ChatGateway) -> AsyncIterator[str]:
        loop = self.conv.tool_loop
        if self.tools is not None and loop is not None:
            return loop.run(gateway, self.body, self.ctx, self.tools)
        return self._stream(gateway, self.body)

    async def _generate(self, gateway: ChatGateway) -> AsyncIterator[str]:
        prefix = "".join(self.durable)
        if not prefix:
            async for text in self._source(gateway):
                yield text
            return
        # Takeover: regenerate; keep the delivered prefix, deliver only what follows it.
        acc = ""
        through = False
        async for text in self._source(gateway):
            if through:
                yield text
                continue
            acc += text
            if len(acc) <= len(prefix):
                if not prefix.startswith(acc):
                    break
                continue
            if not acc.startswith(prefix):
                break
            through = True
            yield acc[len(prefix):]
        else:
            if through or acc == prefix:
                return
        if through:
            return
        if self.tools is not None:
            # The agent loop replays its recorded steps, so its stream repeats the delivered one; a
            # difference means the tool ledger expired: the turn fails rather than guess.
            raise Conflict("the interrupted turn's tool steps are no longer recorded; send the message again")
        body = dict(self.body)
        body["messages"] = [*self.body["messages"], {"role": "assistant", "content": prefix},
                            {"role": "user", "content": CONTINUE_INSTRUCTION}]
        async for text in self._stream(gateway, body):
            yield text

    def _write_queued(self) -> None:
        """Writes the queued chunks unless a write is in flight (that write takes them in its next
        round: chunks that arrive while a write waits go together in the next one). The write runs
        here, in the producer's own step, as far as it goes without waiting: a store that answers
        at once (the in-process one) costs no task and no wake-up; one that waits (Redis, where
        the group commit batches every turn's writes) is carried on by a task while the producer
        goes on reading the model's answer. Readers see the chunks once the write has returned."""
        writing = self._writing
        if writing is not None:
            if not writing.done():
                return
            self._writing = None
            writing.result()  # a failed write fails the turn
        write = self._write().__await__()
        ended, waiting_on = step_now(write)
        if not ended:
            self._writing = self._loop.create_task(_carry_on(write, waiting_on))

    def _stop_writing(self) -> None:
        """At the end of the turn: a write still in flight is cancelled (the turn ended here, cancelled or
        failed); a failed one's error is taken (the turn reports its own), so asyncio does not log it."""
        writing = self._writing
        if writing is None:
            return
        if not writing.done():
            writing.cancel()
        elif not writing.cancelled():
            writing.exception()

    async def _write_rest(self) -> None:
        """The chunks still queued when the answer has ended, after the write in flight (its failure is the turn's)."""
        writing = self._writing
        if writing is not None:
            await writing
        if self._queue and not self.lost:
            await self._write()

    async def _write(self) -> None:
        while self._queue and not self.lost:
            batch, self._queue = self._queue, []
            ok = await self.engine.flush_chunks(self.state, self.seq, owner=self.conv.pod_id,
                                                start=len(self.durable), chunks=batch)
            if not ok:
                self.lost = True
                self._notify()
                return
            if self.first_chunk_at is None:
                self.first_chunk_at = time.perf_counter()
            self.durable.extend(batch)
            self._notify()

    def _arm_heartbeat(self) -> None:
        """The turn's record is marked alive every `streamStaleSeconds / 4` while it is produced: a
        timer, and a task only when one is due (most answers end before the first)."""
        self._beat = self._loop.call_later(self.conv.stale_seconds / 4, self._heartbeat_due)

    def _heartbeat_due(self) -> None:
        self._beating = self._loop.create_task(self._heartbeat())

    def _stop_heartbeat(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
        if self._beating is not None:
            self._beating.cancel()

    async def _heartbeat(self) -> None:
        ok = await self.engine.flush_chunks(self.state, self.seq, owner=self.conv.pod_id,
                                            start=len(self.durable), chunks=[])
        if not ok:
            self.lost = True
            self._notify()
        elif not self.finished:
            self._arm_heartbeat()


async def _carry_on(write: Any, waiting_on: Any) -> None:
    await finish(write, waiting_on)


def stored_prompt(body: dict[str, Any], depth: int, chain: str | None) -> bytes:
    """The prompt as stored with the turn; a nested turn's depth and chain ride along (a takeover needs them)."""
    if depth == 0 and chain is None:
        return orjson.dumps(body)
    return orjson.dumps({**body, CALL_CHAIN_KEY: {"depth": depth, "chain": chain}})


def loaded_prompt(raw: bytes) -> tuple[dict[str, Any], int, str | None]:
    """A stored prompt: the model's request body, and the depth and chain the turn runs at."""
    body: dict[str, Any] = orjson.loads(raw)
    recorded = body.pop(CALL_CHAIN_KEY, None)
    if not isinstance(recorded, dict):
        return body, 0, None
    depth, chain = recorded.get("depth"), recorded.get("chain")
    return (body, depth if isinstance(depth, int) and depth >= 0 else 0,
            chain if isinstance(chain, str) else None)


@dataclass
class TurnStart:
    agent: Agent
    state: SessionState
    seq: int
    producer: Producer


class Conversations:
    def __init__(self, engine: MemoryEngine, agents: AgentManager, gateway_source: Callable[[], ChatGateway | None],
                 *, stale_seconds: float, drain_seconds: float, is_closing: Callable[[], bool],
                 drain_deadline: Callable[[], float | None] = lambda: None, pod_id: str | None = None,
                 depth: SessionDepth | None = None):
        self.engine = engine
        self.depth = depth
        self.agents = agents
        self._gateway_source = gateway_source
        self.stale_seconds = stale_seconds
        self.drain_seconds = drain_seconds
        self._is_closing = is_closing
        self._drain_deadline = drain_deadline
        self.pod_id = pod_id or uuid.uuid4().hex
        self.producers: dict[tuple[str, str, int], Producer] = {}
        self.tool_loop: ToolLoop | None = None

    def gateway(self) -> ChatGateway | None:
        return self._gateway_source()

    async def _tool_turn(self, state: SessionState, seq: int, agent_id: str, *, depth: int = 0,
                         chain: str | None = None) -> TurnRef | None:
        """The agent loop's view of the turn, when the agent may use tools."""
        if self.tool_loop is None:
            return None
        agent = self.tool_loop.registry.agents.lookup(state.tenant, agent_id)
        if agent is None:
            return None
        tools = await self.tool_loop.registry.allowed(state.tenant, agent_id)
        if not tools:
            return None
        return TurnRef(tenant=state.tenant, session_id=state.session_id, seq=seq, agent=agent, tools=tools,
                       depth=depth, chain=chain)

    # a new turn ------------------------------------------------------------------------------
    async def start_turn(self, *, tenant: str, session_id: str, chatbot_id: str, message: str,
                         md5_checksum: str | None, channel_id: str | None, request_id: str | None,
                         routing: RouteDecision | None = None, depth: int = 0,
                         chain: str | None = None) -> TurnStart:
        if self._is_closing():
            raise Draining("this runtime is shutting down; retry on another pod")
        agent = self.agents.get(tenant, chatbot_id, md5_checksum)
        state = await self.engine.session(tenant, session_id, agent.id)
        if state.agent_id != agent.id:
            raise Conflict(f"session {session_id!r} belongs to agent {state.agent_id!r}", field="chatbot_id")
        ctx = CallContext(tenant=tenant, agent_id=agent.id, channel_id=channel_id, request_id=request_id,
                          caching_disabled=agent.config.caching_disabled)
        turn_id = uuid.uuid4().hex
        for _ in range(5):
            recalled = await self.engine.recall(state, message, channel=channel_id)
            messages = build_messages(system_prompt=system_prompt(agent.config, routing), state=state,
                                      recalled=recalled, message=message,
                                      max_recent=self.engine.config.buffer_turns * 2)
            body = {"model": agent.config.model, "messages": messages}
            turn = await self.engine.append_user(state, message, turn_id, prompt=stored_prompt(body, depth, chain),
                                                 model=agent.config.model, owner=self.pod_id,
                                                 routing=routing.summary() if routing else None)
            if turn is not None:
                break
        else:
            raise Conflict("the session is being written concurrently; retry")
        seq = turn.seq + 1
        producer = Producer(self, state, seq, body=body, ctx=ctx, prefix=[])
        producer.tools = await self._tool_turn(state, seq, agent.id, depth=depth, chain=chain)
        self.producers[(tenant, session_id, seq)] = producer
        producer.task = self.engine.spawn(producer.run())
        self._recover_orphans(state)
        return TurnStart(agent=agent, state=state, seq=seq, producer=producer)

    def _recover_orphans(self, state: SessionState) -> None:
        """Assistant turns left pending by a dead pod are finished in the background."""
        for seq in sorted(state.pending):
            if (state.tenant, state.session_id, seq) not in self.producers:
                self.engine.spawn(self._drain(state.tenant, state.session_id, seq))

    async def _drain(self, tenant: str, session_id: str, seq: int) -> None:
        async for event in self.events(tenant, session_id, seq, 0):
            if event.kind == "error" and event.error is not None:
                log.info("an orphaned turn could not be finished now; the next resume retries it",
                         extra={"session_id": session_id, "seq": seq, "code": event.error.code})

    def schedule_archive(self, state: SessionState, ctx: CallContext) -> None:
        """Archive in the background when a batch is due (one at a time per session, see MemoryEngine.maintain)."""
        gateway = self.gateway()
        if gateway is not None and self.engine.archive_due(state):
            self.engine.spawn(self._archive(state, gateway, ctx))

    async def _archive(self, state: SessionState, gateway: ChatGateway, ctx: CallContext) -> None:
        try:
            agent = self.agents.get(state.tenant, state.agent_id)
            await self.engine.maintain(state, gateway, agent.config.model, ctx)
        except StrataError as e:
            log.warning("session archive postponed to the next turn",
                        extra={"session_id": state.session_id, "code": e.code, "error": e.message})

    # following / resuming a turn, on any pod --------------------------------------------------
    async def exists(self, tenant: str, session_id: str, seq: int) -> bool:
        if (tenant, session_id, seq) in self.producers:
            return True
        if await self.engine.l2(lambda s: s.get_turn(tenant, session_id, seq)) is not None:
            return True
        if await self.engine.l2(lambda s: s.stream_info(tenant, session_id, seq, from_index=0)) is not None:
            return True
        # A finished answer whose stream record expired (memory.resumeWindowSeconds): still in the history.
        return (await self._done_from_history(tenant, session_id, seq, 0)).kind == "done"

    async def events(self, tenant: str, session_id: str, seq: int, start: int) -> AsyncIterator[Event]:
        """The turn's events from chunk `start`; a store outage ends them with a retryable error event.
        (One generator: a chunk followed live passes through no other layer on its way to the client.)"""
        try:
            i = start
            while True:
                producer = self.producers.get((tenant, session_id, seq))
                if producer is not None:
                    async for event in producer.follow(i):
                        yield event
                        if event.kind != "chunk":
                            return
                        i = event.index + 1
                    # The producer lost its claim: continue from Redis like any other pod.
                turn = await self.engine.l2(lambda s: s.get_turn(tenant, session_id, seq))
                info = await self._stream_info(tenant, session_id, seq, i)
                if turn is not None:
                    for text in info.chunks if info else []:
                        yield Event("chunk", i, text)
                        i += 1
                    yield Event("done", i if info else -1, turn.content)
                    return
                if info is None:  # never existed, or finished and its stream record expired
                    yield await self._done_from_history(tenant, session_id, seq, i)
                    return
                if info.state == "failed":
                    yield Event("error", i, error=UpstreamError(info.error or "the model call failed"))
                    return
                for text in info.chunks:
                    yield Event("chunk", i, text)
                    i += 1
                if info.state == "done":
                    # Completed, but the turn itself has left Redis (its session was released or archived
                    # to SQL since): the answer is read from the session's history.
                    yield await self._done_from_history(tenant, session_id, seq, i)
                    return
                await self._wait_or_take_over(tenant, session_id, seq, info)
        except StoreUnavailable as e:
            yield Event("error", -1, error=e)

    async def _wait_or_take_over(self, tenant: str, session_id: str, seq: int, info: StreamInfo) -> None:
        """A turn still being produced: take it over once its producer went quiet, else wait a moment."""
        if info.state == "producing" and time.time() - info.heartbeat >= self.stale_seconds \
                and not self._is_closing():  # a closing pod leaves it to a pod that stays
            await self._take_over(tenant, session_id, seq)
            if (tenant, session_id, seq) in self.producers:
                return
        await asyncio.sleep(POLL_SECONDS)

    async def _done_from_history(self, tenant: str, session_id: str, seq: int, index: int) -> Event:
        history = await self.engine.history(tenant, session_id)
        turn = next((t for t in (history or {}).get("turns", []) if t["seq"] == seq and t["role"] == "assistant"),
                    None)
        if turn is None:
            return Event("error", index, error=NotFound("no such turn in this session (or it expired)"))
        return Event("done", index, str(turn["content"]))

    async def _stream_info(self, tenant: str, session_id: str, seq: int, start: int) -> StreamInfo | None:
        return await self.engine.l2(lambda s: s.stream_info(tenant, session_id, seq, from_index=start))

    async def _take_over(self, tenant: str, session_id: str, seq: int) -> None:
        if (tenant, session_id, seq) in self.producers:
            return
        claimed = await self.engine.l2(lambda s: s.claim(tenant, session_id, seq, owner=self.pod_id,
                                                         stale_seconds=self.stale_seconds))
        if claimed != "claimed" or (tenant, session_id, seq) in self.producers:
            return
        info = await self.engine.l2(lambda s: s.stream_info(tenant, session_id, seq, from_index=0))
        if info is None or info.state != "producing" or not info.prompt:
            return
        body, depth, chain = loaded_prompt(info.prompt)
        # The session as it is now: the turn was started on another pod, so this pod's copy (if any)
        # predates at least its user turn, and an archive made from that copy would miss it.
        loaded = await self.engine.l2(lambda s: s.load(tenant, session_id))
        if loaded is None:
            return
        state = self.engine.l1.get(tenant, session_id)
        if state is None:
            state = loaded
            self.engine.l1.put(state)
        else:
            state.adopt(loaded)
        state.pending.add(seq)
        ctx = CallContext(tenant=tenant, agent_id=state.agent_id)
        log.info("taking over an interrupted stream", extra={"session_id": session_id, "seq": seq,
                                                              "prefix_chunks": len(info.chunks), "depth": depth})
        producer = Producer(self, state, seq, body=body, ctx=ctx, prefix=info.chunks)
        producer.tools = await self._tool_turn(state, seq, state.agent_id, depth=depth, chain=chain)
        if (tenant, session_id, seq) in self.producers:
            return
        self.producers[(tenant, session_id, seq)] = producer
        producer.task = self.engine.spawn(producer.run())

    # lifecycle -------------------------------------------------------------------------------
    def busy(self, state: SessionState) -> bool:
        return any(k[0] == state.tenant and k[1] == state.session_id for k in self.producers)

    async def start(self) -> None:
        await self.agents.start()
        self.engine.start_idle_loop(self.busy)
        if self.depth is not None:
            self.depth.start()
        self.engine.start_redrive_loop()

    async def close(self) -> None:
        await self._finish_producers()
        await self.engine.shutdown(self._grace())
        await self.agents.close()
        if self.depth is not None:
            await self.depth.close()

    def _grace(self) -> float:
        deadline = self._drain_deadline()
        return self.drain_seconds if deadline is None else max(0.0, deadline - time.monotonic())

    async def _finish_producers(self) -> None:
        """Answers in production get until the drain deadline; any still running then is cut, its
        record left `producing` (not failed), so a client resuming on another pod has it taken over."""
        tasks = [p.task for p in self.producers.values() if p.task is not None and not p.task.done()]
        if not tasks:
            return
        _, cut = await asyncio.wait(tasks, timeout=self._grace())
        if cut:
            log.warning("answers still in production at the drain deadline are left to other pods",
                        extra={"count": len(cut)})
            for task in cut:
                task.cancel()
            await asyncio.gather(*cut, return_exceptions=True)
