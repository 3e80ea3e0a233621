"""A TCP relay in front of the kube-apiserver that a test can take down in the ways an API server goes away.

The shared control plane must never be stopped (other tests use it), so a component under test
reaches it through this relay instead: a kubeconfig whose server is https://127.0.0.1:<relay port>
verifies (the API server's certificate has the IP SAN 127.0.0.1) and TLS runs end to end; the
relay only sees ciphertext. It runs its own event loop in a daemon thread, so synchronous and
asyncio tests drive it alike:

    with ApiRelay(("127.0.0.1", 16443)) as relay:
        relay.cut()          # every open connection reset at once (how="fin": closed cleanly)
        relay.refuse()       # new connections refused (nothing listens) until resume()
        relay.blackhole()    # connections accepted, nothing forwarded either way: a hung API server
        relay.resume()       # listening and forwarding new connections (black-holed ones stay silent)

`stats()` counts what happened (accepted, cut, held connections), for a drill to report.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml

CALL_TIMEOUT = 10.0
T = TypeVar("T")


class _Connection:
    def __init__(self, client: asyncio.StreamWriter, frozen: bool):
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.frozen = frozen
        """Black-holed: nothing is forwarded either way, ever again (a half-open connection)."""

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, not a FIN: SO_LINGER on with a zero timeout, then close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ApiRelay:
    """Relay 127.0.0.1:<port> -> `upstream`; the port is chosen by the OS once and kept across refuse/resume."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api-relay", daemon=True)
        self._server: asyncio.Server | None = None
        self._blackholed = False
        self._connections: set[_Connection] = set()
        self._stats = {"accepted": 0, "cut": 0, "held": 0, "upstream_failed": 0}

    # ---- control (from any thread) -----------------------------------------------------------
    def start(self) -> ApiRelay:
        self._thread.start()
        self._call(self._listen())
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> ApiRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def cut(self, how: Literal["rst", "fin"] = "rst") -> int:
        """Break every open connection at once, both sides; the number of connections cut."""
        return self._call(self._cut(how))

    def refuse(self) -> None:
        """Stop listening: a new connection is refused (ECONNREFUSED) until resume(). Open ones are left as they are."""
        self._call(self._stop_listening())

    def blackhole(self) -> None:
        """Keep accepting, forward nothing: open connections go silent, new ones are accepted and never
        answered (not even the TLS handshake), as with a hung API server or a dead peer behind a NAT."""
        self._call(self._blackhole())

    def resume(self) -> None:
        """Listen (on the same port) and forward new connections again. The connections black-holed
        stay silent until their client closes them: half-open, as after a failover, so a client that
        waits on one without a timeout waits forever."""
        self._call(self._resume())

    def stats(self) -> dict[str, int]:
        return self._call(self._snapshot())

    def open_connections(self) -> int:
        return self.stats()["open"]

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT)

    # ---- inside the relay's loop ---------------------------------------------------------------
    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
            self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()  # the listening socket only; accepted connections stay
            self._server = None

    async def _blackhole(self) -> None:
        self._blackholed = True
        for connection in self._connections:
            connection.frozen = True

    async def _resume(self) -> None:
        await self._listen()
        self._blackholed = False

    async def _cut(self, how: str) -> int:
        connections = list(self._connections)
        for connection in connections:
            for writer in connection.writers():
                if how == "rst":
                    _reset(writer)
                else:
                    writer.close()
        self._stats["cut"] += len(connections)
        return len(connections)

    async def _close(self) -> None:
        await self._stop_listening()
        await self._cut("rst")

    async def _snapshot(self) -> dict[str, int]:
        return {**self._stats, "open": len(self._connections)}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer, frozen=self._blackholed)
        self._connections.add(connection)
        self._stats["accepted"] += 1
        try:
            if connection.frozen:  # accepted by a hung server: never answered, not even the TLS handshake
                self._stats["held"] += 1
                with contextlib.suppress(OSError):
                    while await reader.read(65536):
                        pass  # until the client gives up
                return
            try:
                up_reader, connection.upstream = await asyncio.open_connection(*self.upstream)
            except OSError:
                self._stats["upstream_failed"] += 1
                _reset(writer)
                return
            to_upstream = asyncio.create_task(self._pipe(connection, reader, connection.upstream))
            to_client = asyncio.create_task(self._pipe(connection, up_reader, writer))
            done, _ = await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
            if connection.frozen and to_client in done:
                await to_upstream  # the API server's end closed while hung: the client hears nothing of it
            for task in (to_upstream, to_client):
                task.cancel()
        finally:
            self._connections.discard(connection)
            for w in connection.writers():
                w.transport.abort()

    @staticmethod
    async def _pipe(connection: _Connection, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            while data := await source.read(65536):
                if connection.frozen:
                    continue  # black-holed: read (so the relay sees a close) and never delivered
                sink.write(data)
                await sink.drain()


def upstream_of(kubeconfig: str | Path) -> tuple[str, int]:
    """(host, port) of the first cluster's server in a kubeconfig."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    server = urlsplit(config["clusters"][0]["cluster"]["server"])
    return str(server.hostname), int(server.port or 443)


def through_relay(kubeconfig_text: str, relay: ApiRelay) -> str:
    """The same kubeconfig with every cluster's server replaced by the relay's."""
    config = yaml.safe_load(kubeconfig_text)
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = relay.server
    return str(yaml.safe_dump(config))
