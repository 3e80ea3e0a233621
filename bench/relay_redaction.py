"""What redacting the upstream API key costs the stream relay, per relayed chunk.

    .venv/bin/python -m bench.relay_redaction [--chunks 20000] [--rounds 5] [--smoke]

Drives the OpenAI-compatible provider's SSE reader (`OpenAICompatProvider._events`, the code
every streamed chunk passes through before the cache and the client) over in-memory pieces,
one SSE event each, with no socket and no event-loop wait in between, then writes each chunk's
SSE line as the API does (the upstream's bytes, or the dict re-serialised when the chunk was
changed), so the figure is that code's own CPU: parsing, the key check, the cross-event
carry-over and the re-serialisation a held-back piece costs. Each text is streamed
without an API key configured (nothing to redact: the floor) and with one.

Texts: `ascii` (English, a few characters per delta, as OpenAI streams), `escaped` (every
non-ASCII character as a `\\uXXXX` escape, as Python servers such as vLLM write it: the path
that decodes to look for an escaped key), `s-ending` (every delta ends in "s", the first
letter of the key: the carry-over holds it back each time, the worst case for ordinary text).

Figures per cell: CPU µs per chunk (process time over the round / chunks) and the p50 of one
chunk's time through the reader (perf_counter around each `__anext__`), medians over rounds.
stdout: one JSON line per cell; stderr: a human table with the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from strata_runtime.config import ModelConfig
from strata_runtime.providers.openai_compat import OpenAICompatProvider

KEY = "sk-proj-Zq8uXb3LmN4pR7tV9wY2aC5eG1iK0oQ6sUbench"
WORDS = {
    "ascii": ["The", " gateway", " relays", " each", " chunk", " to", " the", " client", ",", " then"],
    "escaped": ["你好", "、", "世界", "。", "数据", "流", "在", "这里", "结束", "了"],
    "s-ending": [" chunks", " streams", " tokens", " keys", " bytes", " answers", " models", " tests", " pods",
                 " caches"],
}


def _event(text: str, ensure_ascii: bool) -> bytes:
    obj: dict[str, Any] = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
                           "model": "gpt-4o-mini", "system_fingerprint": "fp_bench",
                           "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None,
                                        "finish_reason": None}]}
    data = json.dumps(obj, separators=(",", ":")).encode() if ensure_ascii else orjson.dumps(obj)
    return b"data: " + data + b"\n\n"


def _pieces(kind: str, n: int) -> list[bytes]:
    words = WORDS[kind]
    pieces = [_event(words[i % len(words)], ensure_ascii=kind == "escaped") for i in range(n - 1)]
    last = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    return [*pieces, b"data: " + orjson.dumps(last) + b"\n\n", b"data: [DONE]\n\n"]


class _Response:
    """What `_events` reads: the pieces, then the end of the body."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def iter_bytes(self) -> AsyncGenerator[bytes, None]:
        for piece in self.pieces:
            yield piece

    async def aclose(self) -> None:
        return None


async def _round(provider: OpenAICompatProvider, pieces: list[bytes]) -> tuple[float, float, int]:
    """(CPU µs per chunk, p50 µs per chunk, chunks) for one pass over `pieces`."""
    events = provider._events(_Response(pieces))  # type: ignore[arg-type]
    step = events.__anext__
    times: list[float] = []
    cpu = time.process_time()
    while True:
        started = time.perf_counter()
        try:
            chunk = await step()
        except StopAsyncIteration:
            break
        raw = getattr(chunk, "raw", None)  # what the SSE writer sends: the upstream's bytes, or the dict re-serialised
        _line = b"data: " + (raw if raw is not None else orjson.dumps(chunk)) + b"\n\n"
        times.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu
    return cpu / len(times) * 1e6, statistics.median(times) * 1e6, len(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the code paths, no figures")
    args = parser.parse_args()
    chunks, rounds = (300, 1) if args.smoke else (args.chunks, args.rounds)
    config = ModelConfig(name="bench", provider="openai", base_url="http://127.0.0.1:9/v1")
    rows = []
    for kind in WORDS:
        pieces = _pieces(kind, chunks)
        for keyed in (False, True):
            provider = OpenAICompatProvider(config, KEY if keyed else None)
            cells = [await _round(provider, pieces) for _ in range(rounds)]
            assert all(n == chunks for _, _, n in cells), cells
            row = {"bench": "relay_redaction", "text": kind, "key": keyed, "chunks": chunks, "rounds": rounds,
                   "cpu_us_per_chunk": round(statistics.median(c[0] for c in cells), 2),
                   "p50_us_per_chunk": round(statistics.median(c[1] for c in cells), 2),
                   "load_avg_1m": round(os.getloadavg()[0], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            await provider.close()
    print(f"{'text':<10} {'key':<5} {'CPU us/chunk':>13} {'p50 us/chunk':>13}", file=sys.stderr)
    for row in rows:
        print(f"{row['text']:<10} {row['key']!s:<5} {row['cpu_us_per_chunk']:>13.2f} "
              f"{row['p50_us_per_chunk']:>13.2f}", file=sys.stderr)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
