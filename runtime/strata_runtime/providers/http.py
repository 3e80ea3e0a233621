"""A small pooled HTTP/1.1 keep-alive client on asyncio protocols + httptools.

Why not httpx or aiohttp: the gateway's budget is about 1 ms of CPU per proxied request
and a general-purpose client spends a large share of that on its own machinery (httpx's
transport/middleware layers especially). This client keeps the per-request path to one
buffer write and an httptools parse; bench/gateway.py measures the whole gateway. It does
only what an LLM upstream needs: one request at a time per connection, Content-Length
request bodies, Content-Length, chunked or close-delimited responses (parsed by httptools),
a cap on the response body, TLS, an HTTP forward proxy (CONNECT tunnels for https, see
`providers/proxy.py`), and per-phase timeouts (connect / read-idle / whole exchange).

    HttpError                 .phase says where it failed: connect | headers | body
    ├── HttpConnectError      could not connect (or TLS/CONNECT failed) within the connect timeout
    ├── HttpTimeout           no byte within the read timeout, or the whole deadline passed
    ├── HttpPoolExhausted     every connection stayed busy for the pool's queue timeout
    ├── HttpBodyTooLarge      the response body grew past its cap
    └── HttpProtocolError     the server closed early or sent something unparsable
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal, cast
from urllib.parse import urlsplit

import httptools

from strata_runtime.providers.proxy import ProxyRoute, open_tunnel

Phase = Literal["connect", "headers", "body"]

log = logging.getLogger("strata.upstream")

# Sized for long-lived streams: every open stream holds one upstream connection for its whole
# answer, so a pod that holds thousands of streams needs thousands of connections per upstream.
DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_QUEUE_TIMEOUT = 5.0  # seconds a request may wait for a free connection when all are busy
DEFAULT_QUEUE_LOG_AFTER = 1.0  # a wait longer than this is logged (at most one line a second per pool)


class HttpError(Exception):
    """Transport-level failure talking to an upstream (never carries the request's headers)."""

    phase: Phase = "headers"


class HttpConnectError(HttpError):
    phase: Phase = "connect"


class HttpTimeout(HttpError):
    pass


class HttpPoolExhausted(HttpError):
    """Every connection was busy for the whole queue timeout: the caller should answer 503 + Retry-After."""

    phase: Phase = "connect"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HttpBodyTooLarge(HttpError):
    phase: Phase = "body"


class HttpProtocolError(HttpError):
    pass


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 60.0  # longest silence between two received bytes
    total: float = 60.0  # whole exchange, from asking for a connection to the last byte


# Statuses that never carry a body: they end at the headers, whatever the framing headers say.
_NO_BODY = frozenset({204, 304})


class _Exchange:
    """The response side of one request: status/headers, then body pieces.

    The reader waits on a bare future (`wait`), woken by the protocol callbacks; the read-idle
    and whole-exchange deadlines are watched by one timer per exchange that re-arms itself only
    when it fires (at most once per read timeout), so a relayed chunk costs no timer and no task.
    """

    __slots__ = ("body", "close_delimited", "complete", "deadline", "error", "headers", "headers_done", "last_data",
                 "limit", "loop", "read_timeout", "received", "status", "streaming", "timer", "waiter")

    def __init__(self, streaming: bool, limit: int, deadline: float, read_timeout: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: deque[bytes] = deque()
        self.headers_done = False
        self.close_delimited = False  # no Content-Length, not chunked: the body ends when the server closes
        self.complete = False
        self.error: HttpError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.streaming = streaming
        self.last_data = time.monotonic()
        self.limit = limit
        self.received = 0
        self.deadline = deadline
        self.read_timeout = read_timeout
        self.timer: asyncio.TimerHandle | None = None
        # The connection's loop: on Python 3.11 every `get_running_loop()` is a getpid() system call.
        self.loop = loop

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: HttpError) -> None:
        if self.error is None and not self.complete:
            error.phase = "body" if self.headers_done else "headers"
            self.error = error
        self.wake()

    def finish(self) -> None:
        self.complete = True
        self.stop_watch()
        self.wake()

    def watch(self) -> None:
        """(Re-)arm the deadline timer, or fail the exchange when a deadline has passed."""
        self.timer = None
        if self.complete or self.error is not None:
            return
        now = time.monotonic()
        if now >= self.deadline:
            self.fail(HttpTimeout("upstream request deadline exceeded"))
            return
        idle_deadline = self.last_data + self.read_timeout
        if now >= idle_deadline:
            self.fail(HttpTimeout("upstream read timed out"))
            return
        self.timer = self.loop.call_later(min(self.deadline, idle_deadline) - now, self.watch)

    def stop_watch(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def wait(self) -> None:
        """Until the next callback (body, headers, end, failure) or a deadline."""
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class _Connection(asyncio.Protocol):
    _PAUSE_AT = 64  # buffered body pieces before reading pauses (a slow stream consumer)

    def __init__(self, pool: HttpPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop  # the loop it was opened on (its exchanges run there)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.closed = False
        self.reused = False
        self.paused = False
        self.server_keep_alive = False
        self.interim = False  # parsing a 1xx interim response

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        ex = self.exchange
        if ex is None or ex.complete:
            return
        if ex.headers_done and ex.close_delimited and ex.error is None:
            # Valid HTTP/1.1: a response without Content-Length or chunked framing ends at EOF.
            ex.finish()
            return
        ex.fail(HttpProtocolError("upstream closed the connection"))

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        ex.last_data = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            ex.fail(HttpProtocolError("unexpected protocol upgrade"))
            self.close()
        except httptools.HttpParserError as e:
            ex.fail(HttpProtocolError(f"malformed upstream response: {e}"))
            self.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.exchange is not None:
            self.exchange.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            status = self.parser.get_status_code()
            if 100 <= status < 200:
                # An interim answer (100 Continue, 103 Early Hints): RFC 9110 says a client must
                # parse 1xx responses it did not ask for; the final response follows.
                self.interim = True
                ex.headers.clear()
                return
            ex.status = status
            ex.headers_done = True
            ex.close_delimited = _close_delimited(ex.status, ex.headers)
            # Only meaningful inside a parser callback, so it is captured here.
            self.server_keep_alive = self.parser.should_keep_alive()
            if ex.streaming:
                ex.wake()

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is None or ex.error is not None:
            return
        ex.received += len(body)
        if ex.received > ex.limit:
            ex.fail(HttpBodyTooLarge(f"upstream response body over {ex.limit} bytes"))
            self.close()
            return
        ex.body.append(body)
        if ex.streaming:
            ex.wake()
            if len(ex.body) >= self._PAUSE_AT and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        ex = self.exchange
        if ex is not None and ex.error is None:
            ex.finish()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self.pool._forget(self)

    @property
    def keep_alive(self) -> bool:
        return not self.closed and self.server_keep_alive


def _close_delimited(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    if status in _NO_BODY or 100 <= status < 200:
        return False
    for name, value in headers:
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            return False
    return True


class HttpResponse:
    """A buffered response (`body`), or a streaming one (`iter_bytes`, then `aclose`)."""

    def __init__(self, pool: HttpPool, conn: _Connection, ex: _Exchange, deadline: float, read_timeout: float):
        self._pool = pool
        self._conn: _Connection | None = conn
        self._ex = ex
        self._deadline = deadline
        self._read_timeout = read_timeout
        self.status = ex.status
        self.headers = ex.headers
        self.body = b""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def iter_bytes(self) -> AsyncGenerator[bytes, None]:
        ex = self._ex
        conn = self._conn
        try:
            while True:
                while ex.body:
                    yield ex.body.popleft()
                if conn is not None:
                    conn.resume()
                if ex.complete:
                    break
                if ex.error is not None:
                    raise ex.error
                await ex.wait()
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.iter_bytes()])

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        self._ex.stop_watch()
        if conn is not None:
            self._pool._release(conn, reusable=self._ex.complete)


@dataclass
class PoolStats:
    """What a pool's queue looks like, read by the metrics at scrape time (no per-request metric calls)."""

    in_use: int = 0  # requests holding a connection slot (open streams included)
    waiting: int = 0  # requests queued for a slot right now
    queued_total: int = 0  # requests that found every slot busy and queued
    queue_timeouts_total: int = 0  # queued requests that gave up (queue timeout or the call's deadline)
    wait_seconds_total: float = 0.0  # time spent queued, summed


class HttpPool:
    """Keep-alive connections to one origin (directly or through a proxy); at most `max_connections`.

    A request that finds every connection busy queues for a slot, visibly: `stats` counts the
    waiting requests (a metric per upstream), a wait over `queue_log_after` seconds is logged, and
    after `queue_timeout` seconds the request fails with `HttpPoolExhausted` (503 + Retry-After).
    """

    def __init__(self, base_url: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS, idle_seconds: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None, proxy: ProxyRoute | None = None,
                 queue_timeout: float = DEFAULT_QUEUE_TIMEOUT, queue_log_after: float = DEFAULT_QUEUE_LOG_AFTER,
                 name: str = ""):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported upstream URL scheme or host in {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        default_port = (self.scheme == "https" and self.port == 443) or (self.scheme == "http" and self.port == 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        self._ssl: ssl.SSLContext | None = None
        if self.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self.proxy = proxy
        # Plain http through a proxy: absolute-form request targets on pooled connections to the
        # proxy. https through a proxy: a CONNECT tunnel per connection, then TLS end to end.
        self._target_prefix = f"http://{self.host_header}" if proxy is not None and self._ssl is None else ""
        self._proxy_headers = proxy.authorization if proxy is not None and self._ssl is None else b""
        self._idle: deque[tuple[_Connection, float]] = deque()
        self._all: set[_Connection] = set()
        self._slots = asyncio.Semaphore(max_connections)
        self._idle_seconds = idle_seconds
        self.name = name or self.host_header
        self.max_connections = max_connections
        self.queue_timeout = queue_timeout
        self.queue_log_after = queue_log_after
        self.stats = PoolStats()
        self._slow_waits = 0  # waits over queue_log_after not yet logged
        self._logged_at = -1e9

    def path(self, suffix: str) -> str:
        return self.base_path + suffix

    async def _connect(self, seconds: float) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(self, loop)
        try:
            async with asyncio.timeout(seconds):
                if self.proxy is None:
                    await loop.create_connection(lambda: conn, self.host, self.port, ssl=self._ssl,
                                                 server_hostname=self.host if self._ssl else None)
                elif self._ssl is None:
                    await loop.create_connection(lambda: conn, self.proxy.host, self.proxy.port)
                else:
                    transport = await open_tunnel(self.proxy, self.host, self.port, self._ssl)
                    transport.set_protocol(conn)
                    conn.connection_made(transport)
        except TimeoutError as e:
            raise HttpConnectError(f"connect to {self._peer()} timed out") from e
        except OSError as e:
            raise HttpConnectError(f"cannot connect to {self._peer()}: {e.strerror or e}") from e
        self._all.add(conn)
        return conn

    def _peer(self) -> str:
        origin = f"{self.host}:{self.port}"
        return origin if self.proxy is None else f"{origin} through proxy {self.proxy.host}:{self.proxy.port}"

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn, since = self._idle.pop()
            if not conn.closed and now - since < self._idle_seconds:
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection, reusable: bool) -> None:
        conn.exchange = None
        if reusable and conn.keep_alive:
            # A stream that arrived faster than it was read may have ended with reading paused: the
            # next exchange on this connection would never see its response.
            conn.resume()
            conn.reused = True
            conn.server_keep_alive = False
            self._idle.append((conn, time.monotonic()))
        else:
            conn.close()
        self._free_slot()

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)

    async def request(self, method: str, path: str, headers: bytes, body: bytes, timeouts: Timeouts,
                      *, stream: bool = False, deadline: float | None = None,
                      max_body: int = 64 * 1024 * 1024) -> HttpResponse:
        """Send one request; `headers` are pre-encoded `Name: value\\r\\n` lines (no Host/length).

        `deadline` (monotonic) caps the exchange below `timeouts.total`: the caller's overall
        deadline across retries. A buffered response is read whole; a streaming one returns
        after the headers. A request that failed on a reused idle connection before any
        response byte is retried once on a fresh connection (the server closed it while idle).
        """
        ends = time.monotonic() + timeouts.total
        deadline = ends if deadline is None else min(deadline, ends)
        if self._slots.locked():  # all connections busy: queue, visibly and not past the deadline
            await self._queue(deadline)
        else:
            await self._slots.acquire()  # a free slot: no timer, no yield
        self.stats.in_use += 1
        head = b"%s %s%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
            method.encode(), self._target_prefix.encode(), path.encode(), self.host_header.encode(), len(body),
            self._proxy_headers, headers)
        payload = head + body
        for attempt in (0, 1):
            conn = self._take_idle() if attempt == 0 else None
            try:
                if conn is None:
                    conn = await self._connect(min(timeouts.connect, max(0.001, deadline - time.monotonic())))
                return await self._exchange(conn, payload, deadline, timeouts.read, stream=stream, max_body=max_body)
            except HttpProtocolError:
                if conn is not None and conn.reused and attempt == 0 and conn.exchange is not None \
                        and not conn.exchange.status:
                    conn.exchange.stop_watch()
                    conn.exchange = None
                    conn.close()
                    continue
                self._abandon(conn)
                raise
            except BaseException:
                self._abandon(conn)
                raise
        raise AssertionError("unreachable")

    async def _queue(self, deadline: float) -> None:
        stats = self.stats
        started = time.monotonic()
        gives_up = min(deadline, started + self.queue_timeout)
        stats.waiting += 1
        stats.queued_total += 1
        try:
            async with asyncio.timeout(max(0.0, gives_up - started)):
                await self._slots.acquire()
        except TimeoutError as e:
            stats.queue_timeouts_total += 1
            self._queued(time.monotonic() - started, "timeout")
            if gives_up < deadline:
                raise HttpPoolExhausted(
                    f"all {self.max_connections} connections to {self.name} stayed busy for "
                    f"{self.queue_timeout:g}s", retry_after=1.0) from e
            raise HttpTimeout("no upstream connection free before the deadline") from e
        finally:
            stats.waiting -= 1
            stats.wait_seconds_total += time.monotonic() - started
        self._queued(time.monotonic() - started, "acquired")

    def _queued(self, waited: float, outcome: str) -> None:
        """Log a wait longer than `queue_log_after`: at most one line a second, with the count since the last."""
        if waited < self.queue_log_after:
            return
        self._slow_waits += 1
        now = time.monotonic()
        if now - self._logged_at < 1.0:
            return
        log.warning("requests queued for an upstream connection", extra={
            "upstream": self.name, "waited_ms": round(waited * 1000), "outcome": outcome,
            "slow_waits": self._slow_waits, "waiting": self.stats.waiting, "in_use": self.stats.in_use,
            "max_connections": self.max_connections, "queue_timeout_seconds": self.queue_timeout})
        self._slow_waits = 0
        self._logged_at = now

    def _free_slot(self) -> None:
        self.stats.in_use -= 1
        self._slots.release()

    def _abandon(self, conn: _Connection | None) -> None:
        """A request failed: its connection is in an unknown state, so close it and free the slot."""
        if conn is not None:
            if conn.exchange is not None:
                conn.exchange.stop_watch()
            conn.exchange = None
            conn.close()
        self._free_slot()

    async def _exchange(self, conn: _Connection, payload: bytes, deadline: float, read_timeout: float,
                        *, stream: bool, max_body: int) -> HttpResponse:
        ex = _Exchange(stream, max_body, deadline, read_timeout, conn.loop)
        conn.exchange = ex
        assert conn.transport is not None
        conn.transport.write(payload)
        ex.watch()
        while not (ex.complete or (stream and ex.headers_done)):
            if ex.error is not None:
                raise ex.error
            await ex.wait()
        if ex.error is not None and not ex.complete:
            raise ex.error
        response = HttpResponse(self, conn, ex, deadline, read_timeout)
        if not stream:
            response.body = b"".join(ex.body)
            ex.body.clear()
            await response.aclose()
        return response

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
