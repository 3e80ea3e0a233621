"""Raw-socket HTTP/1.1 load generator, run as its own process (never shares a core's loop with a server).

    python bench/_load.py --port P --path /v1/chat/completions --body '{"...": 1}' \
        --header 'authorization: Bearer k' --concurrency 32 --duration 5 [--warmup 1]

Each of `concurrency` workers keeps one keep-alive connection and sends requests back to
back. Prints one JSON object: completed, errors, rps, latency p50/p99 ms and, for every
response, time to the first body byte (TTFT for SSE streams) p50/p99 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httptools


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[int] | None = None
        self.first_body = 0.0
        self.status = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("closed"))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.first_body:
            self.first_body = time.perf_counter()

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.status)


async def worker(host: str, port: int, payload: bytes, stop_at: float, record_from: float,  # noqa: PLR0917
                 lat: list[float], ttft: list[float], errors: list[int], total: list[int]) -> None:
    loop = asyncio.get_running_loop()
    conn: _Conn | None = None
    while time.perf_counter() < stop_at:
        if conn is None or conn.transport is None or conn.transport.is_closing():
            _, conn = await loop.create_connection(_Conn, host, port)
        conn.done = loop.create_future()
        conn.first_body = 0.0
        started = time.perf_counter()
        assert conn.transport is not None
        conn.transport.write(payload)
        try:
            status = await conn.done
        except ConnectionError:
            errors.append(0)
            conn = None
            continue
        ended = time.perf_counter()
        total[0] += 1
        if started < record_from:
            continue
        if status != 200:
            errors.append(status)
            continue
        lat.append(ended - started)
        ttft.append((conn.first_body or ended) - started)


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000


async def run(args: argparse.Namespace) -> dict[str, float]:
    body = args.body.encode()
    headers = "".join(f"{h}\r\n" for h in args.header)
    payload = (f"POST {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n{headers}\r\n").encode() + body
    now = time.perf_counter()
    record_from = now + args.warmup
    stop_at = record_from + args.duration
    lat: list[float] = []
    ttft: list[float] = []
    errors: list[int] = []
    total = [0]
    await asyncio.gather(*(worker(args.host, args.port, payload, stop_at, record_from, lat, ttft, errors, total)
                           for _ in range(args.concurrency)))
    measured = time.perf_counter() - record_from
    return {"completed": len(lat), "completed_incl_warmup": total[0], "errors": len(errors), "rps": len(lat) / measured,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "ttft_p50_ms": pct(ttft, 50),
            "ttft_p99_ms": pct(ttft, 99), "measured_s": measured}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--body", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
