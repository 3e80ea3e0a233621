"""A scripted raw-TCP upstream for byte-level misbehaviour: each test writes exactly the bytes a
broken (or merely unusual) server sends, when it sends them, and when it closes.

    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\\r\\nContent-Ty")   # then the script returns: the server closes

    async with RawUpstream(script) as upstream:
        ... model("primary", upstream.base_url) ...

The server runs on the test's own event loop (the gateway under test is in-process too), so a
script can await events the test sets. `RawUpstream.peer_closed` counts connections the client
(the gateway) closed itself: a test of a hang or an oversized answer checks the gateway let go
of its connection instead of leaking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType

import orjson

Script = Callable[["RawConnection"], Awaitable[None]]


class RawConnection:
    def __init__(self, upstream: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 index: int) -> None:
        self.upstream = upstream
        self.reader = reader
        self.writer = writer
        self.index = index  # 0 for the first connection the server accepted
        self.head = b""
        self.body = b""

    async def read_request(self) -> bytes:
        """One whole request (head + Content-Length body); returns its body and records it."""
        self.head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in self.head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        self.body = await self.reader.readexactly(length) if length else b""
        self.upstream.requests.append((self.head, self.body))
        return self.body

    def request_json(self) -> dict[str, object]:
        parsed = orjson.loads(self.body)
        assert isinstance(parsed, dict)
        return parsed

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    async def send(self, *pieces: bytes) -> None:
        """Each piece in its own write and its own TCP segment (Nagle is off), flushed before the next."""
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()
            await asyncio.sleep(0.005)  # lets the segment leave alone, so the reader sees the boundary

    async def wait_peer_close(self, timeout: float) -> bool:
        """True once the client closed its side (EOF or reset) within `timeout` seconds (a limit, not a measure)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True


class RawUpstream:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.peer_closed = 0
        self.hung_up = asyncio.Event()  # set with the first peer_closed
        self.script_errors: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = RawConnection(self, reader, writer, self.connections)
        self.connections += 1
        try:
            await self.script(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.peer_closed += 1  # the gateway hung up while the script still had something to say
            self.hung_up.set()
        except asyncio.CancelledError:
            pass  # the test is over (asyncio's server callback would log a cancelled task as an error)
        except BaseException as e:  # a broken script must fail its test, not vanish in a task
            self.script_errors.append(e)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(BaseException):
                await writer.wait_closed()


@contextlib.contextmanager
def raw_upstream_thread(script: Script) -> Iterator[RawUpstream]:
    """A `RawUpstream` on an event loop of its own in a thread: for a test that drives a runtime process."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="raw-upstream", daemon=True)
    thread.start()
    upstream = RawUpstream(script)
    try:
        asyncio.run_coroutine_threadsafe(upstream.__aenter__(), loop).result(10)
        yield upstream
    finally:
        with contextlib.suppress(BaseException):
            asyncio.run_coroutine_threadsafe(upstream.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def http_head(status: int = 200, *headers: bytes, reason: bytes = b"OK") -> bytes:
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, b"".join(h + b"\r\n" for h in headers))


def json_answer(obj: object, status: int = 200, *headers: bytes) -> bytes:
    body = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return http_head(status, b"content-type: application/json", b"content-length: %d" % len(body), *headers) + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


SSE_CHUNKED_HEAD = http_head(200, b"content-type: text/event-stream", b"transfer-encoding: chunked")
SSE_CLOSE_HEAD = http_head(200, b"content-type: text/event-stream", b"connection: close")
CHUNKED_END = b"0\r\n\r\n"


def completion(content: str | None = "hello", *, usage: object = None, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "id": "chatcmpl-raw", "object": "chat.completion", "created": 1, "model": "raw-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage if usage is not None else {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    body.update(extra)
    return body


def delta_event(content: str | None = None, finish: str | None = None, **delta: object) -> bytes:
    d: dict[str, object] = dict(delta)
    if content is not None:
        d["content"] = content
    return b"data: " + orjson.dumps({"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1,
                                     "model": "raw-model",
                                     "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}) + b"\n\n"


def usage_event(prompt: int = 3, completion: int = 2) -> bytes:
    return b"data: " + orjson.dumps({"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1,
                                     "model": "raw-model", "choices": [],
                                     "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                               "total_tokens": prompt + completion}}) + b"\n\n"


DONE = b"data: [DONE]\n\n"
