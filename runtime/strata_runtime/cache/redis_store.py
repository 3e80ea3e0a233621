"""The Redis entry store (standalone or Cluster) and its process-local semantic partitions.

Keys (every command touches one key, so nothing needs a shared hash slot):

    {prefix}:cache:{tenant-tag}:e:{exact-key}   the stored answer (bytes), with a TTL
    {prefix}:cache:{tenant-tag}:s:{fingerprint}[:{space}]  hash: exact-key -> expiry + vector + query text
                                                 (space: the embedder's `vector_space`, when it has one,
                                                 so pods on another embedder never load these vectors)
    {prefix}:cache:{tenant-tag}:l:{exact-key}   single-flight lock across pods (SET NX PX)
    {prefix}:cache:{bound}:order                 sorted set: entry key -> time stored (oldest first)
    {prefix}:cache:{bound}:sizes                 hash: entry key -> bytes, and `~total`

`maxEntries` and `maxBytes` bound the whole backend: every store runs one script on the two
`{bound}` keys (one hash slot, so it works on a Cluster too) that records the entry and pops
the oldest ones while either bound is exceeded; the popped entries are then unlinked. Entries
that expired on their own stay counted until they are popped (they are the oldest), so the
bounds err on the side of evicting.

Debian's Redis has no vector search, and milvus-lite is ~40 ms per search at 100k (numbers in
bench/cache.py), so the vectors of a partition are loaded lazily from its hash into the same
in-process numpy index the memory backend uses, and refreshed when the hash's length shows
that another pod added entries (checked at most once per `refresh_seconds` per partition).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from strata_runtime.cache.index import F32, SemanticIndex
from strata_runtime.cache.memory import matches
from strata_runtime.stores.redis import RedisClient

_SAFE_TAG = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_ACCOUNT = """
local old = redis.call('hget', KEYS[2], ARGV[1])
redis.call('hset', KEYS[2], ARGV[1], ARGV[2])
local total = redis.call('hincrby', KEYS[2], '~total', tonumber(ARGV[2]) - tonumber(old or '0'))
redis.call('zadd', KEYS[1], ARGV[3], ARGV[1])
local evicted = {}
while redis.call('zcard', KEYS[1]) > tonumber(ARGV[4]) or total > tonumber(ARGV[5]) do
  local popped = redis.call('zpopmin', KEYS[1])
  if #popped == 0 then break end
  local size = redis.call('hget', KEYS[2], popped[1])
  redis.call('hdel', KEYS[2], popped[1])
  total = redis.call('hincrby', KEYS[2], '~total', -tonumber(size or '0'))
  evicted[#evicted + 1] = popped[1]
end
return evicted
"""
_FORGET = """
local removed = 0
for i = 1, #ARGV do
  local size = redis.call('hget', KEYS[2], ARGV[i])
  if size then
    redis.call('hdel', KEYS[2], ARGV[i])
    redis.call('hincrby', KEYS[2], '~total', -tonumber(size))
  end
  removed = removed + redis.call('zrem', KEYS[1], ARGV[i])
end
return removed
"""
_RELEASE_LOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def tenant_tag(tenant: str | None) -> str:
    if tenant is None:
        return "_shared"
    if _SAFE_TAG.match(tenant):
        return "t-" + tenant
    return "h-" + hashlib.sha256(tenant.encode()).hexdigest()[:32]


def pack_member(expires_at: float, vector: F32, query: str) -> bytes:
    return struct.pack("<dI", expires_at, vector.shape[0]) + vector.astype("<f4").tobytes() + query.encode()


def unpack_member(raw: bytes) -> tuple[float, F32, str]:
    expires_at, dim = struct.unpack_from("<dI", raw)
    start = struct.calcsize("<dI")
    vector = np.frombuffer(raw, dtype="<f4", count=dim, offset=start).astype(np.float32)
    return expires_at, vector, raw[start + 4 * dim:].decode()


@dataclass
class _LoadedPartition:
    checked_at: float
    remote_size: int


class RedisStore:
    kind = "redis"

    def __init__(self, prefix: str, *, refresh_seconds: float = 1.0, max_local_vectors: int = 1_000_000,
                 max_entries: int = 10_000, max_bytes: int = 256 * 1024 * 1024, space: str | None = None):
        self.prefix = prefix
        self._space = f":{space}" if space else ""
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.evictions = 0
        self.refresh_seconds = refresh_seconds
        self.max_local_vectors = max_local_vectors
        self.index = SemanticIndex()
        self.queries: dict[str, str] = {}
        self._loaded: dict[str, _LoadedPartition] = {}

    def entry_key(self, tenant: str | None, key: str) -> str:
        return f"{self.prefix}:cache:{tenant_tag(tenant)}:e:{key}"

    def partition_key(self, tenant: str | None, fingerprint: str) -> str:
        return f"{self.prefix}:cache:{tenant_tag(tenant)}:s:{fingerprint}{self._space}"

    def lock_key(self, tenant: str | None, key: str) -> str:
        return f"{self.prefix}:cache:{tenant_tag(tenant)}:l:{key}"

    def bound_keys(self) -> list[str]:
        return [f"{self.prefix}:cache:{{bound}}:order", f"{self.prefix}:cache:{{bound}}:sizes"]

    async def get(self, client: RedisClient, tenant: str | None, key: str) -> bytes | None:
        value = await client.get(self.entry_key(tenant, key))
        return value if isinstance(value, bytes) else None

    async def set(  # noqa: PLR0917
        self, client: RedisClient, tenant: str | None, key: str, value: bytes, ttl_seconds: float,
        semantic: tuple[str, F32, str, float] | None,
    ) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.set(self.entry_key(tenant, key), value, px=max(1, int(ttl_seconds * 1000)))
        if semantic is not None:
            fingerprint, vector, query, semantic_ttl = semantic
            hkey = self.partition_key(tenant, fingerprint)
            pipe.hset(hkey, key, pack_member(time.time() + semantic_ttl, vector, query))
            pipe.pexpire(hkey, max(1, int(semantic_ttl * 1000)))
        await pipe.execute()
        entry_key = self.entry_key(tenant, key)
        size = len(value) + len(entry_key) + (4 * semantic[1].shape[0] + len(semantic[2]) if semantic else 0)
        evicted = await client.eval(_ACCOUNT, 2, *self.bound_keys(), entry_key, size, time.time(),
                                    self.max_entries, self.max_bytes)
        if evicted:
            self.evictions += len(evicted)
            await _unlink_many(client, list(evicted))
            if entry_key.encode() in evicted or entry_key in evicted:
                return  # larger than the whole bound: not kept
        if semantic is not None:
            fingerprint, vector, query, _ = semantic
            if fingerprint in self._loaded:
                self.index.add(fingerprint, key, vector)
                self.queries[key] = query
                self._loaded[fingerprint].remote_size += 1

    async def ensure_partition(self, client: RedisClient, tenant: str | None, fingerprint: str) -> None:
        """Load (or refresh) one partition's vectors from Redis into the local index."""
        now = time.monotonic()
        loaded = self._loaded.get(fingerprint)
        hkey = self.partition_key(tenant, fingerprint)
        if loaded is not None and now - loaded.checked_at < self.refresh_seconds:
            return
        if loaded is not None:
            remote = int(await client.hlen(hkey))
            loaded.checked_at = now
            if remote == loaded.remote_size == self.index.partition_size(fingerprint):
                return
        members: dict[Any, Any] = await client.hgetall(hkey)
        self.index.drop_partition(fingerprint)
        expired: list[bytes] = []
        wall = time.time()
        for field, raw in members.items():
            try:
                expires_at, vector, query = unpack_member(raw)
            except (struct.error, ValueError, UnicodeDecodeError):
                expired.append(field)
                continue
            if expires_at <= wall:
                expired.append(field)
                continue
            key = field.decode() if isinstance(field, bytes) else str(field)
            self.index.add(fingerprint, key, vector)
            self.queries[key] = query
        if expired:
            await client.hdel(hkey, *expired)
        self._loaded[fingerprint] = _LoadedPartition(now, len(members) - len(expired))
        self._bound_local()

    def _bound_local(self) -> None:
        while len(self.index) > self.max_local_vectors and self._loaded:
            oldest = next(iter(self._loaded))
            self.forget_partition(oldest)

    def forget_partition(self, fingerprint: str) -> None:
        part = self.index.partitions.get(fingerprint)
        if part is not None:
            for key in part.ids:
                self.queries.pop(key, None)
        self.index.drop_partition(fingerprint)
        self._loaded.pop(fingerprint, None)

    async def forget_member(self, client: RedisClient, tenant: str | None, fingerprint: str, key: str) -> None:
        """The answer behind an index row is gone (expired or invalidated): drop the row everywhere."""
        self.index.remove(key)
        self.queries.pop(key, None)
        loaded = self._loaded.get(fingerprint)
        if loaded is not None:
            loaded.remote_size = max(0, loaded.remote_size - 1)
        await client.hdel(self.partition_key(tenant, fingerprint), key)

    async def try_lock(self, client: RedisClient, tenant: str | None, key: str, token: str, ttl_ms: int) -> bool:
        return bool(await client.set(self.lock_key(tenant, key), token, nx=True, px=ttl_ms))

    async def unlock(self, client: RedisClient, tenant: str | None, key: str, token: str) -> None:
        await client.eval(_RELEASE_LOCK, 1, self.lock_key(tenant, key), token)

    async def invalidate(self, client: RedisClient, *, tenant: str | None, pattern: str | None) -> int:
        tag = tenant_tag(tenant) if tenant is not None else "*"
        removed = 0
        batch: list[bytes] = []

        async def flush(keys: list[bytes]) -> int:
            if pattern is not None:
                values = await _get_many(client, keys)
                keys = [k for k, v in zip(keys, values, strict=True) if v is not None and
                        matches(pattern, _exact_key(k), _query_of(v))]
            if not keys:
                return 0
            await client.eval(_FORGET, 2, *self.bound_keys(), *keys)
            return await _unlink_many(client, keys)

        async for raw in client.scan_iter(match=f"{self.prefix}:cache:{tag}:e:*", count=500):
            batch.append(raw)
            if len(batch) >= 500:
                removed += await flush(batch)
                batch = []
        if batch:
            removed += await flush(batch)
        if pattern is None:  # whole tenants: drop their semantic partitions too
            partitions = [raw async for raw in client.scan_iter(match=f"{self.prefix}:cache:{tag}:s:*", count=500)]
            await _unlink_many(client, partitions)
        self.index.clear()
        self.queries.clear()
        self._loaded.clear()
        return removed

    async def count(self, client: RedisClient, limit: int = 100_000) -> int:
        n = 0
        async for _ in client.scan_iter(match=f"{self.prefix}:cache:*:e:*", count=1000):
            n += 1
            if n >= limit:
                break
        return n


async def _unlink_many(client: RedisClient, keys: list[bytes]) -> int:
    # One key per command: keys of different slots cannot share a multi-key UNLINK in a Cluster,
    # and redis-py's cluster pipeline does not queue UNLINK.
    results = await asyncio.gather(*(client.unlink(k) for k in keys))
    return sum(int(r) for r in results)


async def _get_many(client: RedisClient, keys: list[bytes]) -> list[bytes | None]:
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.get(k)
    return list(await pipe.execute())


def _query_of(value: bytes) -> str:
    try:
        return str(orjson.loads(value).get("query") or "")
    except orjson.JSONDecodeError:
        return ""


def _exact_key(redis_key: bytes) -> str:
    return redis_key.decode(errors="replace").rsplit(":e:", 1)[-1]
