"""A small pooled HTTP/1.1 keep-alive client on asyncio protocols + httptools.

Why not httpx or aiohttp: the gateway's budget is about 1 ms of CPU per proxied request
and a general-purpose client spends a large share of that on its own machinery (httpx's
transport/middleware layers especially). This client keeps the per-request path to one
buffer write and an httptools parse; bench/gateway.py measures the whole gateway. It does
only what an LLM upstream needs: one request at a time per connection, Content-Length
request bodies, Content-Length or chunked responses (parsed by httptools), TLS, and
per-phase timeouts (connect / read-idle / whole exchange).

    HttpError
    ├── HttpConnectError      could not connect (or TLS failed) within the connect timeout
    ├── HttpTimeout           no byte within the read timeout, or the whole deadline passed
    └── HttpProtocolError     the server closed early or sent something unparsable
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools


class HttpError(Exception):
    """Transport-level failure talking to an upstream (never carries the request's headers)."""


class HttpConnectError(HttpError):
    pass


class HttpTimeout(HttpError):
    pass


class HttpProtocolError(HttpError):
    pass


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 60.0  # longest silence between two received bytes
    total: float = 60.0  # whole exchange, from asking for a connection to the last byte


class _Exchange:
    """The response side of one request: status/headers, then body pieces."""

    __slots__ = ("body", "complete", "error", "event", "headers", "headers_done", "last_data", "status",
                 "streaming")

    def __init__(self, streaming: bool) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: deque[bytes] = deque()
        self.headers_done = False
        self.complete = False
        self.error: BaseException | None = None
        self.event = asyncio.Event()
        self.streaming = streaming
        self.last_data = time.monotonic()


class _Connection(asyncio.Protocol):
    _PAUSE_AT = 64  # buffered body pieces before reading pauses (a slow stream consumer)

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.closed = False
        self.reused = False
        self.paused = False
        self.server_keep_alive = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        ex = self.exchange
        if ex is not None and not ex.complete:
            ex.error = HttpProtocolError("upstream closed the connection")
            ex.event.set()

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        ex.last_data = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            ex.error = HttpProtocolError("unexpected protocol upgrade")
            ex.event.set()
            self.close()
        except httptools.HttpParserError as e:
            ex.error = HttpProtocolError(f"malformed upstream response: {e}")
            ex.event.set()
            self.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.exchange is not None:
            self.exchange.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.status = self.parser.get_status_code()
            ex.headers_done = True
            # Only meaningful inside a parser callback, so it is captured here.
            self.server_keep_alive = self.parser.should_keep_alive()
            if ex.streaming:
                ex.event.set()

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.body.append(body)
            if ex.streaming:
                ex.event.set()
                if len(ex.body) >= self._PAUSE_AT and not self.paused and self.transport is not None:
                    self.paused = True
                    self.transport.pause_reading()

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.complete = True
            ex.event.set()

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

    async def iter_bytes(self) -> AsyncIterator[bytes]:
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
                ex.event.clear()
                await _wait(ex, self._deadline, self._read_timeout)
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.iter_bytes()])

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn, reusable=self._ex.complete)


async def _wait(ex: _Exchange, deadline: float, read_timeout: float) -> None:
    """Wait for the exchange's next event, bounded by the read-idle and the whole deadline."""
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise HttpTimeout("upstream request deadline exceeded")
        idle_deadline = ex.last_data + read_timeout
        if now >= idle_deadline:
            raise HttpTimeout("upstream read timed out")
        try:
            await asyncio.wait_for(ex.event.wait(), min(deadline, idle_deadline) - now)
            return
        except TimeoutError:
            continue


class HttpPool:
    """Keep-alive connections to one origin; at most `max_connections` at a time."""

    def __init__(self, base_url: str, *, max_connections: int = 256, idle_seconds: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None):
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
        self._idle: deque[tuple[_Connection, float]] = deque()
        self._all: set[_Connection] = set()
        self._slots = asyncio.Semaphore(max_connections)
        self._idle_seconds = idle_seconds
        self.waiting = 0  # requests queued for a connection slot

    def path(self, suffix: str) -> str:
        return self.base_path + suffix

    async def _connect(self, seconds: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None)
        except TimeoutError as e:
            raise HttpConnectError(f"connect to {self.host}:{self.port} timed out") from e
        except OSError as e:
            raise HttpConnectError(f"cannot connect to {self.host}:{self.port}: {e.strerror or e}") from e
        conn = protocol
        self._all.add(conn)
        return conn

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
            conn.reused = True
            conn.server_keep_alive = False
            self._idle.append((conn, time.monotonic()))
        else:
            conn.close()
        self._slots.release()

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)

    async def request(self, method: str, path: str, headers: bytes, body: bytes, timeouts: Timeouts,
                      *, stream: bool = False) -> HttpResponse:
        """Send one request; `headers` are pre-encoded `Name: value\\r\\n` lines (no Host/length).

        A buffered response is read whole; a streaming one returns after the headers.
        A request that failed on a reused idle connection before any response byte is
        retried once on a fresh connection (the server closed it while idle).
        """
        deadline = time.monotonic() + timeouts.total
        if self._slots.locked():
            self.waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), timeouts.total)
            except TimeoutError as e:
                raise HttpTimeout("no upstream connection free before the deadline") from e
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            method.encode(), path.encode(), self.host_header.encode(), len(body), headers)
        payload = head + body
        for attempt in (0, 1):
            conn = self._take_idle() if attempt == 0 else None
            try:
                if conn is None:
                    conn = await self._connect(min(timeouts.connect, max(0.001, deadline - time.monotonic())))
                return await self._exchange(conn, payload, deadline, timeouts.read, stream)
            except HttpProtocolError:
                if conn is not None and conn.reused and attempt == 0 and conn.exchange is not None \
                        and not conn.exchange.status:
                    conn.exchange = None
                    conn.close()
                    continue
                if conn is not None:
                    conn.exchange = None
                    conn.close()
                self._slots.release()
                raise
            except BaseException:
                if conn is not None:
                    conn.exchange = None
                    conn.close()
                self._slots.release()
                raise
        raise AssertionError("unreachable")

    async def _exchange(self, conn: _Connection, payload: bytes, deadline: float, read_timeout: float,
                        stream: bool) -> HttpResponse:
        ex = _Exchange(stream)
        conn.exchange = ex
        assert conn.transport is not None
        conn.transport.write(payload)
        while not (ex.complete or (stream and ex.headers_done)):
            if ex.error is not None:
                raise ex.error
            ex.event.clear()
            await _wait(ex, deadline, read_timeout)
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
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)
