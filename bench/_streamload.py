"""Slow-stream load generator, run as its own process: N streams open at once, back to back.

    python -m bench._streamload --port P --path /v1/chat/completions --body '{...}' \
        --header 'authorization: Bearer k' --streams 500 --duration 6 --ramp 1 --interval-ms 100

Each of `streams` workers keeps one keep-alive connection and sends one streaming request after
another until the end, so `streams` answers are open at once. Starts are spread over `ramp`
seconds (no SYN storm). For every response it records the time to the first body byte and the
gap between consecutive body reads; "added delay" is a gap minus the upstream's own pace
(`interval-ms`), clipped at 0. Only streams that start after the ramp are measured.

Prints one JSON object: completed streams, errors, SSE events received (a blank line ends one),
TTFB p50/p99, added inter-chunk delay p50/p99/max, and this process's own CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import time
from typing import Any

import httptools

from bench._stats import percentile


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[int] | None = None
        self.status = 0
        self.events = 0
        self.reads: list[float] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._end(ConnectionError("bad response"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(ConnectionError("closed"))

    def _end(self, error: Exception) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(error)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.reads.append(time.perf_counter())
        self.events += body.count(b"\n\n")

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.status)


class Totals:
    def __init__(self) -> None:
        self.completed = 0
        self.errors: list[str] = []
        self.events = 0
        self.events_all = 0
        self.ttfb: list[float] = []
        self.added: list[float] = []
        self.sent = 0
        self.reads = 0


async def worker(args: argparse.Namespace, head: bytes, payload: bytes, *, start_at: float,
                 record_from: float, stop_at: float, totals: Totals) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    conn: _Conn | None = None
    interval = args.interval_ms / 1000
    while time.perf_counter() < stop_at:
        if args.unique:  # a fresh "{n}" per request: cache misses, one session per turn
            totals.sent += 1
            body = args.body.replace("{n}", f"{args.tag}{totals.sent}").encode()
            payload = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        try:
            if conn is None or conn.transport is None or conn.transport.is_closing():
                _, conn = await loop.create_connection(_Conn, args.host, args.port)
            conn.done = loop.create_future()
            conn.events, conn.reads, conn.status = 0, [], 0
            started = time.perf_counter()
            assert conn.transport is not None
            conn.transport.write(payload)
            # A stream still open `grace` seconds after the end is counted as an error, not waited for.
            status = await asyncio.wait_for(conn.done, max(0.1, stop_at + args.grace - time.perf_counter()))
        except TimeoutError:
            totals.errors.append("unfinished")
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            return
        except (ConnectionError, OSError) as e:
            if time.perf_counter() >= record_from:
                totals.errors.append(type(e).__name__)
            conn = None
            await asyncio.sleep(0.05)
            continue
        totals.events_all += conn.events
        if started < record_from:
            continue
        if status != 200:
            totals.errors.append(str(status))
            continue
        totals.completed += 1
        totals.events += conn.events
        totals.reads += len(conn.reads)
        reads = conn.reads
        if reads:
            totals.ttfb.append(reads[0] - started)
            totals.added.extend(max(0.0, b - a - interval) for a, b in itertools.pairwise(reads))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    body = args.body.encode()
    headers = "".join(f"{h}\r\n" for h in args.header)
    head = (f"POST {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nContent-Type: application/json\r\n"
            f"{headers}").encode()
    payload = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    now = time.perf_counter()
    record_from = now + args.ramp
    stop_at = record_from + args.duration
    totals = Totals()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(worker(args, head, payload, start_at=now + args.ramp * i / args.streams,
                                 record_from=record_from, stop_at=stop_at, totals=totals)
                           for i in range(args.streams)))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"completed": totals.completed, "errors": len(totals.errors), "error_kinds": sorted(set(totals.errors))[:5],
            "events": totals.events, "reads": totals.reads, "events_all": totals.events_all,
            "ttfb_p50_ms": percentile(totals.ttfb, 0.5) * 1000, "ttfb_p99_ms": percentile(totals.ttfb, 0.99) * 1000,
            "added_p50_ms": percentile(totals.added, 0.5) * 1000, "added_p99_ms": percentile(totals.added, 0.99) * 1000,
            "added_max_ms": percentile(totals.added, 1) * 1000, "loadgen_cpu_s": cpu,
            "wall_s": time.perf_counter() - now}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--body", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--ramp", type=float, default=1.0)
    parser.add_argument("--interval-ms", type=float, default=100.0)
    parser.add_argument("--grace", type=float, default=30.0, help="seconds a stream may run past the end")
    parser.add_argument("--unique", action="store_true", help='replace "{n}" in the body by a counter per request')
    parser.add_argument("--tag", default="", help="prefix of the counter (distinct per run)")
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
