"""L2: the session checkpoint, turn buffer and stream progress in Redis (or in-process memory).

Keys of one session share the hash tag ``{tenant:session}``, so every multi-key update is one
atomic script on one Cluster slot::

    {prefix}:sess:{t:s}:ckpt            hash   agent, next_seq, summary, archived_upto, archived_batches
    {prefix}:sess:{t:s}:turns           hash   seq -> turn JSON (the unarchived buffer)
    {prefix}:sess:{t:s}:pending         set    assistant seqs still being produced
    {prefix}:sess:{t:s}:stream:{seq}    hash   state, owner, hb, prompt, model, error
    {prefix}:sess:{t:s}:chunks:{seq}    list   the answer's chunks, in order

Conditional multi-key updates (compare-and-set on the sequence number, on the stream owner,
on the chunk count) are Lua scripts: as atomic as MULTI/EXEC and one round trip. Every key
gets the checkpoint TTL on every write, except a finished answer's stream record and chunks:
those are only there for clients resuming the stream, so they expire `resume_window` seconds
after the answer finished. ``MemorySessionStore`` implements the same operations for one process
(sessions when Redis is not configured).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import NoScriptError

from strata_runtime.memory.state import SessionState, StreamInfo, Turn

RESUME_WINDOW_SECONDS = 300  # memory.resumeWindowSeconds' default


def session_base(prefix: str, tenant: str, session_id: str) -> str:
    return f"{prefix}:sess:{{{tenant}:{session_id}}}"


class SessionStore(Protocol):
    kind: str

    async def load(self, tenant: str, session_id: str) -> SessionState | None: ...
    async def restore(self, state: SessionState, *, ttl: int) -> bool: ...
    async def append_user(self, state: SessionState, turn: Turn, *, prompt: bytes, model: str, owner: str,
                          ttl: int) -> tuple[bool, int]: ...
    async def flush_chunks(self, tenant: str, session_id: str, seq: int, *, owner: str, start: int,
                           chunks: list[str], ttl: int) -> bool: ...
    async def complete(self, tenant: str, session_id: str, turn: Turn, *, owner: str, ttl: int) -> Turn | None: ...
    async def fail(self, tenant: str, session_id: str, seq: int, *, owner: str, error: str, ttl: int) -> None: ...
    async def stream_info(self, tenant: str, session_id: str, seq: int, *, from_index: int) -> StreamInfo | None: ...
    async def claim(self, tenant: str, session_id: str, seq: int, *, owner: str, stale_seconds: float) -> str: ...
    async def get_turn(self, tenant: str, session_id: str, seq: int) -> Turn | None: ...
    async def trim(self, tenant: str, session_id: str, *, seqs: list[int], summary: str, ttl: int) -> bool: ...
    async def release(self, tenant: str, session_id: str, *, next_seq: int) -> bool: ...
    async def delete(self, tenant: str, session_id: str) -> bool: ...


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------------------------------ Redis

_APPEND_USER = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'next_seq') or '0')
local expected = tonumber(ARGV[1])
if cur ~= expected then
  if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then return {1, expected} end
  return {0, cur}
end
local ttl = tonumber(ARGV[8])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], 'next_seq', expected + 2, 'agent', ARGV[3])
if redis.call('HEXISTS', KEYS[1], 'archived_upto') == 0 then
  redis.call('HSET', KEYS[1], 'archived_upto', '-1', 'archived_batches', '0', 'summary', '')
end
redis.call('SADD', KEYS[3], expected + 1)
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('HSET', KEYS[4], 'state', 'producing', 'owner', ARGV[4], 'hb', ARGV[5], 'prompt', ARGV[6],
           'model', ARGV[7])
for i = 1, 5 do redis.call('EXPIRE', KEYS[i], ttl) end
return {1, expected}
"""

# KEYS: stream, chunks. ARGV: owner, start, now, ttl, chunks...
_FLUSH = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'producing' then
  return -1
end
local n = redis.call('LLEN', KEYS[2])
local start = tonumber(ARGV[2])
local count = #ARGV - 4
if count == 0 then redis.call('HSET', KEYS[1], 'hb', ARGV[3]); return n end
if n == start + count then return n end
if n ~= start then return -2 end
if count > 0 then redis.call('RPUSH', KEYS[2], unpack(ARGV, 5)) end
redis.call('HSET', KEYS[1], 'hb', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
return n + count
"""

# KEYS: ckpt, turns, pending, stream, chunks. ARGV: seq, turn json, owner, ttl, done ttl
_COMPLETE = """
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then return existing end
if redis.call('HGET', KEYS[4], 'owner') ~= ARGV[3] then return false end
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], 'state', 'done')
redis.call('HDEL', KEYS[4], 'prompt')
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[5]))
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[5]))
return ARGV[2]
"""

# KEYS: ckpt, turns, pending, stream. ARGV: seq, owner, error, ttl
_FAIL = """
if redis.call('HGET', KEYS[4], 'owner') ~= ARGV[2] or redis.call('HGET', KEYS[4], 'state') ~= 'producing' then
  return 0
end
redis.call('HDEL', KEYS[2], tostring(tonumber(ARGV[1]) - 1))
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], 'state', 'failed', 'error', ARGV[3])
redis.call('HDEL', KEYS[4], 'prompt')
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[4]))
return 1
"""

# KEYS: stream. ARGV: owner, now, stale seconds
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state ~= 'producing' then return state end
local hb = tonumber(redis.call('HGET', KEYS[1], 'hb') or '0')
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then return 'claimed' end
if tonumber(ARGV[2]) - hb < tonumber(ARGV[3]) then return 'alive' end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'hb', ARGV[2])
return 'claimed'
"""

# KEYS: ckpt, turns, pending. ARGV: last_seq, summary, ttl, the batch's seqs...
_TRIM = """
-- A session released meanwhile (its keys dropped) is not recreated as a checkpoint without next_seq:
-- loaded, that would restart the session at seq 0 and reissue sequence numbers.
if redis.call('HEXISTS', KEYS[1], 'next_seq') == 0 then return 0 end
local upto = tonumber(redis.call('HGET', KEYS[1], 'archived_upto') or '-1')
local last = tonumber(ARGV[1])
if upto >= last then return 0 end
-- Only the batch's turns are removed, and only if they are every turn up to `last`: a batch made from
-- a stale copy of the session (one that missed a turn another pod wrote) is refused, not trimmed past
-- the turn it missed, which is in no batch.
local batch = {}
for i = 4, #ARGV do batch[tostring(tonumber(ARGV[i]))] = true end
for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
  if tonumber(f) <= last and not batch[tostring(tonumber(f))] then return 0 end
end
for _, p in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if tonumber(p) <= last then return 0 end
end
for i = 4, #ARGV do redis.call('HDEL', KEYS[2], ARGV[i]) end
redis.call('HSET', KEYS[1], 'archived_upto', last, 'summary', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'archived_batches', 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""

# KEYS: ckpt, turns, pending. ARGV: ckpt fields..., then '--', then seq, json pairs; ttl first
_RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[1])
local i = 2
while ARGV[i] ~= '--' do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2
end
i = i + 1
while i <= #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2
end
redis.call('EXPIRE', KEYS[1], ttl)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ttl) end
return 1
"""

# KEYS: ckpt, turns, pending. ARGV: next_seq
_RELEASE = """
if redis.call('HGET', KEYS[1], 'next_seq') ~= ARGV[1] or redis.call('SCARD', KEYS[3]) > 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"""


class _GroupCommit:
    """One script's calls from every session, sent together: one round trip per batch, not per call.

    A call made while no batch is in flight leaves at once (a turn alone is not delayed); calls made
    while one is in flight wait for it and then go together in the next, one pipeline of EVALSHA
    (no MULTI: each call is its own atomic script, and one session's failure is its own). A Redis
    Cluster pipeline sends each slot's calls to its node. A node that does not know the script yet
    gets it as EVAL for those calls (a cluster pipeline does not load scripts by itself). A caller
    cancelled before its batch left is dropped from it, as if it had never called.
    """

    def __init__(self, client: Any, script: Any) -> None:
        self.client = client
        self.script = script  # redis-py Script: .sha, .script
        self.waiting: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self.sender: asyncio.Task[None] | None = None
        self.batches = 0  # pipelines sent (round trips), for tests and benchmarks
        self.calls = 0

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self.waiting.append((keys, args, done))
        sender = self.sender
        if sender is None or sender.done() or sender.get_loop() is not loop:  # (a store outliving its loop)
            self.sender = loop.create_task(self._send())
        return await done

    async def _send(self) -> None:
        batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        try:
            while self.waiting:
                batch = [call for call in self.waiting if not call[2].done()]
                self.waiting = []
                if batch:
                    await self._one_batch(batch)
        finally:
            if self.sender is asyncio.current_task():
                self.sender = None
            for _, _, done in batch + self.waiting:  # only if this task itself was cancelled (shutdown)
                if not done.done():
                    done.cancel()
            self.waiting = []

    async def _one_batch(self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> None:
        self.batches += 1
        self.calls += len(batch)
        try:
            results = await self._pipeline([(keys, args, False) for keys, args, _ in batch])
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                again = await self._pipeline([(batch[i][0], batch[i][1], True) for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except Exception as error:  # the connection failed: every call of the batch failed with it
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(error)
            return
        for (_, _, done), result in zip(batch, results, strict=True):
            if not done.done():
                if isinstance(result, Exception):
                    done.set_exception(result)
                else:
                    done.set_result(result)

    async def _pipeline(self, calls: list[tuple[list[str], list[Any], bool]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for keys, args, as_eval in calls:  # a cluster pipeline blocks its evalsha()/eval() helpers, not the commands
            if as_eval:
                pipe.execute_command("EVAL", self.script.script, len(keys), *keys, *args)
            else:
                pipe.execute_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


class RedisSessionStore:
    kind = "redis"

    def __init__(self, client: Any, prefix: str, *, resume_window: int = RESUME_WINDOW_SECONDS):
        self.client = client
        self.prefix = prefix
        self.resume_window = resume_window
        self._append = client.register_script(_APPEND_USER)
        self._flush = client.register_script(_FLUSH)
        self._complete = client.register_script(_COMPLETE)
        self._fail = client.register_script(_FAIL)
        self._claim = client.register_script(_CLAIM)
        self._trim = client.register_script(_TRIM)
        self._restore = client.register_script(_RESTORE)
        self._release = client.register_script(_RELEASE)
        # Chunks of every producing turn: a busy pod writes them in one round trip per batch.
        self._flush_group = _GroupCommit(client, self._flush)

    def _keys(self, tenant: str, session_id: str, seq: int | None = None) -> list[str]:
        base = session_base(self.prefix, tenant, session_id)
        keys = [f"{base}:ckpt", f"{base}:turns", f"{base}:pending"]
        if seq is not None:
            keys += [f"{base}:stream:{seq}", f"{base}:chunks:{seq}"]
        return keys

    async def load(self, tenant: str, session_id: str) -> SessionState | None:
        ckpt_key, turns_key, pending_key = self._keys(tenant, session_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(ckpt_key)
        pipe.hvals(turns_key)
        pipe.smembers(pending_key)
        ckpt, turns, pending = await pipe.execute()
        if not ckpt:
            return None
        return SessionState.from_checkpoint(
            tenant, session_id, {_s(k): _s(v) for k, v in ckpt.items()}, [Turn.from_json(t) for t in turns],
            {int(p) for p in pending})

    async def restore(self, state: SessionState, *, ttl: int) -> bool:
        args: list[str | bytes] = [str(ttl)]
        for k, v in state.checkpoint_fields().items():
            args += [k, v]
        args.append("--")
        for turn in state.buffered():
            args += [str(turn.seq), turn.to_json()]
        return bool(await self._restore(keys=self._keys(state.tenant, state.session_id), args=args))

    async def append_user(self, state: SessionState, turn: Turn, *, prompt: bytes, model: str, owner: str,
                          ttl: int) -> tuple[bool, int]:
        keys = self._keys(state.tenant, state.session_id, turn.seq + 1)
        ok, cur = await self._append(keys=keys, args=[turn.seq, turn.to_json(), state.agent_id, owner,
                                                      repr(time.time()), prompt, model, ttl])
        return bool(ok), int(cur)

    async def flush_chunks(self, tenant: str, session_id: str, seq: int, *, owner: str, start: int,
                           chunks: list[str], ttl: int) -> bool:
        keys = self._keys(tenant, session_id, seq)[3:]
        result = int(await self._flush_group(keys, [owner, start, repr(time.time()), ttl, *chunks]))
        return result >= 0

    async def complete(self, tenant: str, session_id: str, turn: Turn, *, owner: str, ttl: int) -> Turn | None:
        keys = self._keys(tenant, session_id, turn.seq)
        stored = await self._complete(keys=keys, args=[turn.seq, turn.to_json(), owner, ttl,
                                                       min(ttl, self.resume_window)])
        return Turn.from_json(stored) if stored else None

    async def fail(self, tenant: str, session_id: str, seq: int, *, owner: str, error: str, ttl: int) -> None:
        keys = self._keys(tenant, session_id, seq)[:4]
        await self._fail(keys=keys, args=[seq, owner, error[:500], min(ttl, self.resume_window)])

    async def stream_info(self, tenant: str, session_id: str, seq: int, *, from_index: int) -> StreamInfo | None:
        stream_key, chunks_key = self._keys(tenant, session_id, seq)[3:]
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(stream_key)
        pipe.lrange(chunks_key, from_index, -1)
        record, chunks = await pipe.execute()
        if not record:
            return None
        rec = {_s(k): v for k, v in record.items()}
        return StreamInfo(seq=seq, state=_s(rec.get("state", b"")), owner=_s(rec.get("owner", b"")),
                          heartbeat=float(_s(rec.get("hb", b"0"))), prompt=rec.get("prompt", b""),
                          model=_s(rec.get("model", b"")), chunks=[_s(c) for c in chunks],
                          error=_s(rec.get("error", b"")))

    async def claim(self, tenant: str, session_id: str, seq: int, *, owner: str, stale_seconds: float) -> str:
        stream_key = self._keys(tenant, session_id, seq)[3]
        return _s(await self._claim(keys=[stream_key], args=[owner, repr(time.time()), stale_seconds]))

    async def get_turn(self, tenant: str, session_id: str, seq: int) -> Turn | None:
        raw = await self.client.hget(self._keys(tenant, session_id)[1], str(seq))
        return Turn.from_json(raw) if raw else None

    async def trim(self, tenant: str, session_id: str, *, seqs: list[int], summary: str, ttl: int) -> bool:
        """Drop an archived batch (`seqs`, ascending) from the buffer; False (nothing done) when the
        session has another turn, or a pending one, up to the batch's last."""
        keys = self._keys(tenant, session_id)
        return bool(await self._trim(keys=keys, args=[max(seqs), summary, ttl, *seqs]))

    async def release(self, tenant: str, session_id: str, *, next_seq: int) -> bool:
        return bool(await self._release(keys=self._keys(tenant, session_id), args=[next_seq]))

    async def delete(self, tenant: str, session_id: str) -> bool:
        base = session_base(self.prefix, tenant, session_id)
        ckpt_key, turns_key, pending_key = self._keys(tenant, session_id)
        existed = int(await self.client.exists(ckpt_key))
        # Stream records live under numbered keys; SCAN within the hash-tagged pattern finds them.
        extra = [k async for k in self.client.scan_iter(match=f"{base}:*", count=500)]
        await self.client.delete(ckpt_key, turns_key, pending_key)
        for key in extra:
            await self.client.delete(key)
        return existed > 0


# ------------------------------------------------------------------------------------------ memory


@dataclass
class _MemSession:
    ckpt: dict[str, str] = field(default_factory=dict)
    turns: dict[int, bytes] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)
    streams: dict[int, dict[str, Any]] = field(default_factory=dict)
    chunks: dict[int, list[str]] = field(default_factory=dict)
    expires: float = 0.0


class MemorySessionStore:
    """The same operations for one process; used when Redis is not configured. A finished
    answer's stream record is dropped `resume_window` seconds after it finished (checked when the
    session gets its next turn), so a long session does not keep every answer twice."""

    kind = "memory"

    def __init__(self, max_sessions: int = 100_000, *, resume_window: int = RESUME_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self._sessions: dict[tuple[str, str], _MemSession] = {}
        self._max = max_sessions
        self.resume_window = resume_window
        self._clock = clock

    def _get(self, tenant: str, session_id: str) -> _MemSession | None:
        sess = self._sessions.get((tenant, session_id))
        if sess is not None and sess.expires < time.time():
            del self._sessions[(tenant, session_id)]
            return None
        return sess

    def _touch(self, sess: _MemSession, ttl: int) -> None:
        sess.expires = time.time() + ttl

    async def load(self, tenant: str, session_id: str) -> SessionState | None:
        sess = self._get(tenant, session_id)
        if sess is None or not sess.ckpt:
            return None
        return SessionState.from_checkpoint(tenant, session_id, dict(sess.ckpt),
                                            [Turn.from_json(t) for t in sess.turns.values()], set(sess.pending))

    async def restore(self, state: SessionState, *, ttl: int) -> bool:
        if self._get(state.tenant, state.session_id) is not None:
            return False
        sess = _MemSession(ckpt=state.checkpoint_fields(), turns={t.seq: t.to_json() for t in state.buffered()})
        self._touch(sess, ttl)
        self._sessions[(state.tenant, state.session_id)] = sess
        return True

    async def append_user(self, state: SessionState, turn: Turn, *, prompt: bytes, model: str, owner: str,
                          ttl: int) -> tuple[bool, int]:
        key = (state.tenant, state.session_id)
        sess = self._get(*key)
        if sess is None:
            if len(self._sessions) >= self._max:
                self._sessions.pop(next(iter(self._sessions)))
            sess = self._sessions[key] = _MemSession()
        cur = int(sess.ckpt.get("next_seq", "0"))
        if cur != turn.seq:
            return (sess.turns.get(turn.seq) == turn.to_json(), cur)
        self._drop_finished_streams(sess)
        sess.turns[turn.seq] = turn.to_json()
        sess.ckpt.setdefault("archived_upto", "-1")
        sess.ckpt.setdefault("archived_batches", "0")
        sess.ckpt.setdefault("summary", "")
        sess.ckpt.update(next_seq=str(cur + 2), agent=state.agent_id)
        sess.pending.add(turn.seq + 1)
        sess.streams[turn.seq + 1] = {"state": "producing", "owner": owner, "hb": time.time(), "prompt": prompt,
                                      "model": model, "error": "", "finished": 0.0}
        sess.chunks[turn.seq + 1] = []
        self._touch(sess, ttl)
        return True, cur

    async def flush_chunks(self, tenant: str, session_id: str, seq: int, *, owner: str, start: int,
                           chunks: list[str], ttl: int) -> bool:
        sess = self._get(tenant, session_id)
        rec = sess.streams.get(seq) if sess else None
        if sess is None or rec is None or rec["owner"] != owner or rec["state"] != "producing":
            return False
        stored = sess.chunks.setdefault(seq, [])
        if not chunks:
            rec["hb"] = time.time()
            return True
        if len(stored) == start + len(chunks):
            return True
        if len(stored) != start:
            return False
        stored.extend(chunks)
        rec["hb"] = time.time()
        return True

    async def complete(self, tenant: str, session_id: str, turn: Turn, *, owner: str, ttl: int) -> Turn | None:
        sess = self._get(tenant, session_id)
        if sess is None:
            return None
        if turn.seq in sess.turns:
            return Turn.from_json(sess.turns[turn.seq])
        rec = sess.streams.get(turn.seq)
        if rec is None or rec["owner"] != owner:
            return None
        sess.turns[turn.seq] = turn.to_json()
        sess.pending.discard(turn.seq)
        rec.update(state="done", prompt=b"", finished=self._clock())
        self._touch(sess, ttl)
        return turn

    async def fail(self, tenant: str, session_id: str, seq: int, *, owner: str, error: str, ttl: int) -> None:
        sess = self._get(tenant, session_id)
        rec = sess.streams.get(seq) if sess else None
        if sess is None or rec is None or rec["owner"] != owner or rec["state"] != "producing":
            return
        sess.turns.pop(seq - 1, None)
        sess.pending.discard(seq)
        rec.update(state="failed", error=error[:500], prompt=b"", finished=self._clock())

    def _drop_finished_streams(self, sess: _MemSession) -> None:
        cutoff = self._clock() - self.resume_window
        for seq in [s for s, rec in sess.streams.items() if rec["state"] != "producing" and rec["finished"] <= cutoff]:
            del sess.streams[seq]
            sess.chunks.pop(seq, None)

    async def stream_info(self, tenant: str, session_id: str, seq: int, *, from_index: int) -> StreamInfo | None:
        sess = self._get(tenant, session_id)
        rec = sess.streams.get(seq) if sess else None
        if sess is None or rec is None:
            return None
        return StreamInfo(seq=seq, state=rec["state"], owner=rec["owner"], heartbeat=rec["hb"],
                          prompt=rec["prompt"], model=rec["model"],
                          chunks=list(sess.chunks.get(seq, [])[from_index:]), error=rec["error"])

    async def claim(self, tenant: str, session_id: str, seq: int, *, owner: str, stale_seconds: float) -> str:
        sess = self._get(tenant, session_id)
        rec = sess.streams.get(seq) if sess else None
        if rec is None:
            return "missing"
        if rec["state"] != "producing":
            return str(rec["state"])
        if rec["owner"] != owner and time.time() - rec["hb"] < stale_seconds:
            return "alive"
        rec.update(owner=owner, hb=time.time())
        return "claimed"

    async def get_turn(self, tenant: str, session_id: str, seq: int) -> Turn | None:
        sess = self._get(tenant, session_id)
        raw = sess.turns.get(seq) if sess else None
        return Turn.from_json(raw) if raw else None

    async def trim(self, tenant: str, session_id: str, *, seqs: list[int], summary: str, ttl: int) -> bool:
        sess = self._get(tenant, session_id)
        last_seq = max(seqs)
        if sess is None or int(sess.ckpt.get("archived_upto", "-1")) >= last_seq:
            return False
        if any(s <= last_seq for s in (set(sess.turns) - set(seqs)) | sess.pending):
            return False  # a stale copy's batch: it missed a turn (see _TRIM)
        for seq in seqs:
            sess.turns.pop(seq, None)
        sess.ckpt.update(archived_upto=str(last_seq), summary=summary,
                         archived_batches=str(int(sess.ckpt.get("archived_batches", "0")) + 1))
        return True

    async def release(self, tenant: str, session_id: str, *, next_seq: int) -> bool:
        sess = self._get(tenant, session_id)
        if sess is None or sess.ckpt.get("next_seq") != str(next_seq) or sess.pending:
            return False
        del self._sessions[(tenant, session_id)]
        return True

    async def delete(self, tenant: str, session_id: str) -> bool:
        return self._sessions.pop((tenant, session_id), None) is not None
