"""A small HTTP forward proxy process, for testing that a client really goes through a proxy.

    python -m tests.support.forward_proxy --port 0 [--auth user:password]   -> "LISTENING host:port"

It does what squid or tinyproxy do for the two kinds of proxied requests:

* `CONNECT host:port` (https through a proxy): answers `200 Connection Established`, then
  relays bytes both ways; TLS runs end to end, the proxy sees only ciphertext.
* `POST http://host:port/path` (absolute-form, plain http): forwards each request to the
  origin in origin-form (`POST /path`), without the `Proxy-*` headers, and relays the answer.

With `--auth` a request without the matching `Proxy-Authorization: Basic ...` gets a 407.
`GET /_proxy_stats` (origin-form, addressed to the proxy itself) returns what went through:
`{"connect": ["host:port", ...], "forwarded": ["http://host:port/path", ...], "refused": N}`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import os
import signal
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import orjson

from tests.support.processes import stop_process

_STATS: dict[str, Any] = {"connect": [], "forwarded": [], "refused": 0}
_HOP_BY_HOP = (b"proxy-authorization", b"proxy-connection")


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    request_line, *lines = raw[:-4].split(b"\r\n")
    headers = [(name.strip().lower(), value.strip()) for name, _, value in (line.partition(b":") for line in lines)]
    return request_line, headers


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((v for k, v in headers if k == name), None)


def _answer(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n%s"
            % (status, len(body), extra, body))


class Proxy:
    def __init__(self, auth: str | None) -> None:
        self.expected = b"Basic " + base64.b64encode(auth.encode()) if auth else None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        relay: asyncio.Task[None] | None = None
        while (head := await _read_head(reader)) is not None:
            request_line, headers = head
            method, target, _version = request_line.split(b" ", 2)
            if target == b"/_proxy_stats":
                writer.write(_answer(b"200 OK", orjson.dumps(_STATS)))
                return
            if self.expected is not None and _header(headers, b"proxy-authorization") != self.expected:
                _STATS["refused"] += 1
                writer.write(_answer(b"407 Proxy Authentication Required", b"{}",
                                     b"proxy-authenticate: Basic realm=\"test\"\r\n"))
                return
            if method == b"CONNECT":
                await self._tunnel(target.decode(), reader, writer)
                return
            url = urlsplit(target.decode())
            if upstream is None:
                upstream = await asyncio.open_connection(url.hostname, url.port or 80)
                relay = asyncio.create_task(_relay(upstream[0], writer))
            _STATS["forwarded"].append(target.decode())
            length = int(_header(headers, b"content-length") or b"0")
            body = await reader.readexactly(length)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            kept = b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers if k not in _HOP_BY_HOP)
            upstream[1].write(b"%s %s HTTP/1.1\r\n%s\r\n%s" % (method, path.encode(), kept, body))
        if upstream is not None:
            upstream[1].close()
        if relay is not None:
            await relay

    async def _tunnel(self, authority: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, _, port = authority.rpartition(":")
        try:
            target_reader, target_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            writer.write(_answer(b"502 Bad Gateway", b"{}"))
            return
        _STATS["connect"].append(authority)
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await asyncio.gather(_relay(reader, target_writer), _relay(target_reader, writer))


async def serve(host: str, port: int, auth: str | None) -> None:
    proxy = Proxy(auth)
    server = await asyncio.start_server(proxy.handle, host, port)
    bound = server.sockets[0].getsockname()
    sys.stdout.write(f"LISTENING {bound[0]}:{bound[1]}\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()

    def watch_parent() -> None:  # an orphaned proxy would keep its port busy
        if os.getppid() != parent:
            stop.set()
        else:
            loop.call_later(1.0, watch_parent)

    watch_parent()
    await stop.wait()
    server.close()


class ProxyProcess:
    """Handle on one `python -m tests.support.forward_proxy` process (a context manager)."""

    def __init__(self, auth: str | None = None) -> None:
        self.auth = auth
        self.process: subprocess.Popen[bytes] | None = None
        self.host, self.port = "127.0.0.1", 0

    def __enter__(self) -> ProxyProcess:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        cmd = [sys.executable, "-m", "tests.support.forward_proxy", "--port", "0",
               *(("--auth", self.auth) if self.auth else ())]
        self.process = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("LISTENING "):
            self.__exit__()
            raise RuntimeError(f"forward proxy did not start: {line!r}")
        host, _, port = line.removeprefix("LISTENING ").strip().rpartition(":")
        self.host, self.port = host, int(port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process, 5.0)
            self.process = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        """What went through the proxy so far (asked directly, never through a proxy)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("GET", "/_proxy_stats")
            return orjson.loads(conn.getresponse().read())  # type: ignore[no-any-return]
        finally:
            conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--auth", help="user:password that clients must present")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.auth))


if __name__ == "__main__":
    main()
