"""Faults of the Redis client's own connection, raised where the client raises them in production."""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import Connection

CLOSED_TRANSPORT = "unable to perform operation on <TCPTransport closed=True>; the handler is closed"


class ClosedTransportWriter:
    """A stream writer over a transport uvloop has closed: every write raises its RuntimeError."""

    def writelines(self, data: Any) -> None:
        raise RuntimeError(CLOSED_TRANSPORT)

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def wait_closed(self) -> None:
        return None


def close_transport_under(connection: Connection) -> None:
    """The next write on `connection` fails as a write on a socket closed under it does (a Cluster
    failover, a killed server): inside redis-py's own send path, so the traceback has its frames."""
    if connection._reader is None:
        connection._reader = object()  # type: ignore[assignment]
    connection._writer = ClosedTransportWriter()  # type: ignore[assignment]
