"""The Redis connection (standalone or Cluster) shared by every Redis-backed component.

Components ask `connector.client` for the live client, or None while Redis is unreachable;
they call `report_failure` when a command fails so that the connector stops handing out the
client at once instead of failing every request until the next probe.

The pool heals instead of accumulating damage:

* bounded: `maxConnections` per pool (per node on a Cluster); a standalone command waits up to
  `poolTimeoutSeconds` for a free connection rather than failing at the cap;
* a stale pooled connection (the server restarted: "Connection closed by server") is dropped
  and the command retried once on a fresh one, with no back-off; a second failure is real;
* after an outage the recovery probe builds a *new* client and closes the old one, so nothing
  the outage left behind (dead sockets, connections stranded by cancelled commands, an old
  Cluster topology) survives into the next period.

Every command and every pipeline has one overall deadline, `commandTimeoutSeconds`, whatever the
client does inside it: the wait for a pooled connection, connecting, its retries and, on a
Cluster, its topology refreshes and redirections (each attempt has its own socket timeout, so
without it a request on a Cluster with a hung master took 8.7 s with a 1 s socket timeout). Past
it the command fails with `CommandDeadlineExceeded`, a redis TimeoutError, which callers already
map to 503 `store_unavailable` (session state) or a miss (cache). The deadline cancels the
command; redis-py closes a connection whose send or read is cancelled (it never goes back to the
pool with a reply half read), a Cluster node hands its connection back synchronously, and the
standalone pool's hand-back is shielded so that a cancellation landing there cannot leave the
connection counted as in use.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from strata_runtime.config import RedisStoreConfig
from strata_runtime.stores.health import BackendHealth, StoreUnavailable


def is_redis_failure(error: BaseException) -> bool:
    """A failure of Redis (or of its client), not of our code: the client's own errors, socket errors,
    timeouts, and an AttributeError or RuntimeError raised inside the redis package. redis-py's
    asyncio client raises those when a Cluster master is killed and another task closes the
    connection it is writing on ('NoneType' object has no attribute 'writelines'; uvloop's "the
    handler is closed"): taken for bugs, they failed a turn or answered 500 in the cluster-master
    drill. Callers wrap only the client call, so a frame of the redis package in the traceback
    means the client raised it."""
    if isinstance(error, (RedisError, OSError, asyncio.TimeoutError)):
        return True
    if not isinstance(error, (AttributeError, RuntimeError)):
        return False
    inside = f"{os.sep}redis{os.sep}"
    frame = error.__traceback__
    while frame is not None:
        if inside in frame.tb_frame.f_code.co_filename:
            return True
        frame = frame.tb_next
    return False

log = logging.getLogger("strata.stores")

T = TypeVar("T")


class CommandDeadlineExceeded(RedisTimeoutError):
    """A command or pipeline outlived `stores.redis.commandTimeoutSeconds`: a timeout like a socket
    timeout (ambiguous for the health hysteresis, a Redis failure for every caller)."""


async def within_deadline(seconds: float, what: str, op: Awaitable[T]) -> T:
    """`op` within `seconds`, else CommandDeadlineExceeded. A TimeoutError that `op` raised itself
    passes through unchanged."""
    scope = asyncio.timeout(seconds)
    try:
        async with scope:
            return await op
    except TimeoutError:
        if scope.expired():
            raise CommandDeadlineExceeded(
                f"redis {what} took longer than commandTimeoutSeconds ({seconds:g} s)") from None
        raise


def _takes_at_once(lock: asyncio.Lock) -> bool:
    """Whether `lock.acquire()` would take the lock without waiting (asyncio's own fast path), so
    without a point at which a cancellation could land."""
    waiters = lock._waiters  # asyncio.Lock.acquire's own condition
    return not lock.locked() and (not waiters or all(w.cancelled() for w in waiters))


class _Pool(BlockingConnectionPool):
    async def release(self, connection: AbstractConnection) -> None:
        # A deadline may cancel a command while it hands its connection back, waiting for one of the
        # pool's two locks (contended exactly when the pool is exhausted by a hung server).
        # Interrupted there, the hand-back would leave the connection counted as in use for good
        # and the pool one connection smaller; shielded, it completes anyway. Once both locks are
        # taken, the connection is no longer counted as in use before the next await. The shield (a
        # task, ~15-20 us of CPU per command) is paid only when a lock would make the hand-back wait.
        condition_lock = getattr(self._condition, "_lock", None)  # the Condition's own asyncio.Lock
        if isinstance(condition_lock, asyncio.Lock) and _takes_at_once(condition_lock) and _takes_at_once(self._lock):
            await super().release(connection)
        else:
            await asyncio.shield(super().release(connection))


class _Pipeline(Pipeline):
    command_timeout = 5.0

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return await within_deadline(self.command_timeout, "pipeline", super().execute(raise_on_error))


class DeadlineRedis(Redis):
    """A standalone client whose every command and pipeline ends within `command_timeout`."""

    command_timeout = 5.0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        command = super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        return await within_deadline(self.command_timeout, _name(args), command)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> _Pipeline:
        pipe = _Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.command_timeout = self.command_timeout
        return pipe


class _ClusterPipeline(ClusterPipeline):
    command_timeout = 5.0

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        execution = super().execute(raise_on_error, allow_redirections)
        return await within_deadline(self.command_timeout, "pipeline", execution)


class DeadlineRedisCluster(RedisCluster):
    """A Cluster client whose every command and pipeline ends within `command_timeout`, its retries,
    topology refreshes and redirections included."""

    command_timeout = 5.0

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await within_deadline(self.command_timeout, _name(args), super().execute_command(*args, **kwargs))

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> _ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        pipe = _ClusterPipeline(self, transaction)  # type: ignore[abstract]  # as RedisCluster.pipeline builds it
        pipe.command_timeout = self.command_timeout
        return pipe


def _name(args: tuple[Any, ...]) -> str:
    name = args[0] if args else "command"
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


RedisClient = Redis | RedisCluster


class RedisConnector:
    def __init__(self, config: RedisStoreConfig, env: Mapping[str, str]):
        self.config = config
        self.prefix = config.key_prefix
        self.url = env.get(config.url_env) if config.url_env else config.url
        self.enabled = config.backend != "memory" and bool(self.url)
        self.health = BackendHealth(
            name="redis",
            kind="cluster" if config.cluster else "standalone",
            required=config.backend == "redis",
            failure_threshold=config.failure_threshold,
        )
        if not self.enabled:
            self.health.kind = "memory"
            self.health.mark_ok()
        self._client: RedisClient | None = None
        self._retiring: dict[asyncio.Task[None], RedisClient] = {}  # old clients closed after a grace
        self.clients_built = 0

    @property
    def client(self) -> RedisClient | None:
        """The live client, or None when Redis is not in use right now."""
        return self._client if self.enabled and self.health.state == "ok" else None

    @property
    def holds_sessions(self) -> bool:
        """Sessions live in Redis whenever it is configured (`auto` with a URL, or `redis`)."""
        return self.enabled

    def session_client(self) -> RedisClient:
        """The client for session state, which never falls back: StoreUnavailable while Redis is out."""
        client = self.client
        if client is None:
            raise StoreUnavailable("session store (Redis) unreachable; retry shortly",
                                   retry_after_seconds=self.config.recover_interval_seconds)
        return client

    async def start(self) -> None:
        if not self.enabled:
            return
        self._client = self._build_client()
        await self.health.probe(self._ping_current)
        self.health.keep_recovering(self._recover, self.config.recover_interval_seconds)

    def _build_client(self) -> RedisClient:
        assert self.url is not None
        self.clients_built += 1
        options: dict[str, Any] = {
            "socket_connect_timeout": self.config.connect_timeout_seconds,
            "socket_timeout": self.config.socket_timeout_seconds,
            "decode_responses": False,
            "health_check_interval": 30,
            # One immediate retry on a fresh connection: enough for a stale pooled socket,
            # not enough to turn an outage into seconds of waiting per command.
            "retry": Retry(NoBackoff(), 1),
        }
        client: DeadlineRedis | DeadlineRedisCluster
        if self.config.cluster:
            client = cast(DeadlineRedisCluster, DeadlineRedisCluster.from_url(
                self.url, max_connections=self.config.max_connections, **options))
        else:
            pool = _Pool.from_url(self.url, max_connections=self.config.max_connections,
                                  timeout=self.config.pool_timeout_seconds, **options)
            client = cast(DeadlineRedis, DeadlineRedis.from_pool(pool))  # it owns the pool: aclose() closes it
        client.command_timeout = self.config.command_timeout_seconds
        return client

    async def _ping(self, client: RedisClient) -> None:
        timeout = self.config.connect_timeout_seconds + 1
        if isinstance(client, RedisCluster):
            # Every master must answer and the cluster must serve all slots: a restarted master
            # answers PING while the cluster still refuses commands (CLUSTERDOWN).
            await within_deadline(self.config.command_timeout_seconds, "topology refresh", client.initialize())
            await asyncio.wait_for(client.ping(target_nodes=RedisCluster.PRIMARIES), timeout=timeout)
            info = await asyncio.wait_for(client.cluster_info(), timeout=timeout)
            if str(info.get("cluster_state", "")) != "ok":
                raise RedisConnectionError(f"cluster_state is {info.get('cluster_state')!r}")
            return
        await asyncio.wait_for(client.ping(), timeout=timeout)

    async def _ping_current(self) -> None:
        if self._client is None:
            self._client = self._build_client()
        await self._ping(self._client)

    async def ping(self) -> None:
        await self._ping_current()
        self.health.note_success()

    async def _recover(self) -> None:
        """Probe with a brand-new client; only when it answers, swap it in and close the old one."""
        fresh = self._build_client()
        try:
            await self._ping(fresh)
        except BaseException:
            await _close(fresh)
            raise
        old, self._client = self._client, fresh
        if old is not None:
            # Commands that picked up the old client just before the outage was noticed may still
            # be running on it: close it once they have surely finished or timed out.
            task = asyncio.create_task(self._close_later(old))
            self._retiring[task] = old
            task.add_done_callback(self._retiring.pop)

    async def _close_later(self, client: RedisClient) -> None:
        await asyncio.sleep(self.config.command_timeout_seconds + 1)  # no command outlives its deadline
        await _close(client)

    def report_failure(self, error: BaseException) -> None:
        definite = isinstance(error, (RedisConnectionError, OSError)) and not isinstance(error, RedisTimeoutError)
        self.health.mark_failed(error, definite=definite)

    def report_success(self) -> None:
        self.health.note_success()

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def pool_stats(self) -> dict[str, int]:
        """Connections of the live client's pool(s): `inUse` must fall back to ~0 when idle."""
        client = self._client
        if client is None:
            return {"inUse": 0, "idle": 0, "max": self.config.max_connections, "clientsBuilt": self.clients_built}
        if isinstance(client, RedisCluster):
            nodes = client.get_nodes()
            total = sum(len(n._connections) for n in nodes)
            idle = sum(len(n._free) for n in nodes)
        else:
            pool = client.connection_pool
            idle = len(pool._available_connections)
            total = idle + len(pool._in_use_connections)
        return {"inUse": total - idle, "idle": idle, "max": self.config.max_connections,
                "clientsBuilt": self.clients_built}

    async def close(self) -> None:
        await self.health.stop_recovering()
        retiring = dict(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        for client in retiring.values():
            await _close(client)
        if self._client is not None:
            await _close(self._client)
            self._client = None


async def _close(client: RedisClient) -> None:
    """Close a client we are discarding; a failure only means its sockets were already dead."""
    try:
        await client.aclose()
    except (RedisConnectionError, OSError, RuntimeError) as e:
        log.debug("closing a discarded redis client failed", extra={"error": type(e).__name__})
