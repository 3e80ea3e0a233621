"""uvicorn's httptools protocol with bounds on the request head, which uvicorn does not have.

* A deadline from the moment a connection opens (or a new request starts on a kept-alive
  one) until its headers are complete: a client trickling a head byte by byte (slowloris)
  gets 408 and is disconnected after `headTimeoutSeconds` instead of holding a socket forever.
* Request line plus headers at most `maxHeadBytes`, at most `maxHeaders` headers: 431.
* A head the parser rejects gets a JSON 400 like every other error, not uvicorn's plain text.

Each of these answers closes the connection. Once the runtime drains (see server.py), every
answer says `Connection: close`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from strata_runtime.config.http import HttpLimitsConfig
from strata_runtime.errors import BadRequest, StrataError
from strata_runtime.http_limits import HeadTooLarge, RequestTimeout


class _HeadRejected(Exception):
    """Raised inside a parser callback to stop parsing; the reason is kept on the protocol."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[HttpLimitsConfig] = HttpLimitsConfig()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._head_count = 0
        self._rejection: StrataError | None = None

    def draining(self) -> bool:
        """Whether the runtime drains (bound by `protocol_with`)."""
        return False

    # the head deadline ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._head_count = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()
        if self.draining() and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with `Connection: close`: the client reconnects elsewhere

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.head_timeout_seconds, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined head stalled behind a response still being sent
            return
        seconds = self.limits.head_timeout_seconds
        self._reply_and_close(RequestTimeout(f"the request head was not complete within {seconds:g} s"))

    # head size -----------------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._count_head(len(url), headers=0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4, headers=1)
        super().on_header(name, value)

    def _count_head(self, size: int, headers: int) -> None:
        self._head_bytes += size
        self._head_count += headers
        if self._head_bytes > self.limits.max_head_bytes:
            self._rejection = HeadTooLarge(f"request line and headers over {self.limits.max_head_bytes} bytes")
        elif self._head_count > self.limits.max_headers:
            self._rejection = HeadTooLarge(f"more than {self.limits.max_headers} request headers")
        if self._rejection is not None:
            raise _HeadRejected  # httptools turns it into HttpParserCallbackError: see send_400_response

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this for any parser error, ours included."""
        self._disarm_head_timer()
        self._reply_and_close(self._rejection or BadRequest("malformed HTTP request"))

    def _reply_and_close(self, error: StrataError) -> None:
        if self.transport.is_closing():
            return
        body = orjson.dumps(error.body())
        head = [STATUS_LINE[error.status], b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body), b"connection: close\r\n", b"\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def protocol_with(limits: HttpLimitsConfig, draining: Callable[[], bool] = lambda: False,
                  ) -> type[BoundedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to this config's limits and
    to the runtime's drain flag (once it is set, every answer closes its connection)."""
    return type("ConfiguredHttpToolsProtocol", (BoundedHttpToolsProtocol,),
                {"limits": limits, "draining": lambda _self: draining()})
