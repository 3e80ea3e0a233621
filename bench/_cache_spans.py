"""A `strata-runtime` process with time.perf_counter_ns spans around each stage of a cache lookup.

    python -m bench._cache_spans --config FILE --host 127.0.0.1 --port P   (env STRATA_SPANS_OUT=FILE)

Used by `bench/cache.py spans` (never by the product). It wraps, in this process only, the ASGI
app, the gateway, the cache's stages (planning and key building, the exact lookup, the embedding
call, the index search, the verifier, the entry fetch and decode), the local embedder's queue and
worker-thread hand-off and the engine call, then runs the ordinary CLI. Spans are summed per
request (a stage called twice counts once, its total), one request at a time (concurrency 1:
a stage running in the worker thread is booked to the request being served), and written as JSON
lines to STRATA_SPANS_OUT when the process exits. The wrapped code is whatever checkout is on
PYTHONPATH, so the same harness measures a before and an after.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import json
import os
import sys
import time
from typing import Any

NS = time.perf_counter_ns
_records: list[dict[str, Any]] = []
_state: dict[str, dict[str, Any] | None] = {"current": None}  # the request being served


def _add(label: str, ns: int) -> None:
    current = _state["current"]
    if current is not None:
        current[label] = current.get(label, 0) + ns


def _mark(label: str) -> None:
    current = _state["current"]
    if current is not None:
        current[label] = NS()


def _wrap(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name, None)
    if original is None:
        print(f"spans: {owner.__name__}.{name} not found, not measured", file=sys.stderr)
        return
    if inspect.iscoroutinefunction(original):
        @functools.wraps(original)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            start = NS()
            try:
                return await original(*args, **kwargs)
            finally:
                _add(label, NS() - start)
        setattr(owner, name, timed_async)
    else:
        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = NS()
            try:
                return original(*args, **kwargs)
            finally:
                _add(label, NS() - start)
        setattr(owner, name, timed)


class _TimedApp:
    def __init__(self, app: Any):
        self._app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") != "/v1/chat/completions":
            await self._app(scope, receive, send)
            return
        _state["current"] = record = {}
        start = NS()
        first_send: list[int] = []

        async def timed_send(message: Any) -> None:
            if message.get("type") == "http.response.start" and not first_send:
                first_send.append(NS())
            await send(message)

        try:
            await self._app(scope, receive, timed_send)
        finally:
            _state["current"] = None
            record["app_ns"] = NS() - start
            if first_send:
                record["app_to_response_start_ns"] = first_send[0] - start
            _records.append(record)


def _dump() -> None:
    path = os.environ.get("STRATA_SPANS_OUT")
    if path:
        with open(path, "w") as out:
            for record in _records:
                out.write(json.dumps(record) + "\n")


def install() -> None:
    from strata_runtime import server
    from strata_runtime.cache import service
    from strata_runtime.cache.index import SemanticIndex
    from strata_runtime.cache.memory import MemoryStore
    from strata_runtime.cache.verifier import Verifier
    from strata_runtime.embeddings import local
    from strata_runtime.gateway.gateway import Gateway

    create_app = server.create_app

    def timed_create_app(*args: Any, **kwargs: Any) -> Any:
        return _TimedApp(create_app(*args, **kwargs))

    server.create_app = timed_create_app  # type: ignore[assignment]

    _wrap(Gateway, "complete", "gateway_complete")
    cache = service.CacheService
    _wrap(cache, "complete", "cache_complete")
    _wrap(cache, "_plan", "cache_plan_keys")
    _wrap(cache, "_get", "cache_exact_get")
    _wrap(cache, "_embed", "cache_embed")
    _wrap(cache, "_semantic", "cache_semantic")
    _wrap(cache, "_verify", "verifier_check")
    _wrap(service, "_search", "index_search")
    _wrap(service, "_decode", "entry_decode")
    _wrap(MemoryStore, "get", "memory_get")
    _wrap(Verifier, "recall", "verifier_recall")
    _wrap(SemanticIndex, "search", "index_search_numpy")

    # The embedder: queue and hand-off to the worker thread, the model's encode (in the thread).
    embed = local.LocalEmbedder.embed

    @functools.wraps(embed)
    async def timed_embed(self: Any, texts: Any, **kwargs: Any) -> Any:
        start = NS()
        _mark("embed_enter_at")
        try:
            return await embed(self, texts, **kwargs)
        finally:
            end = NS()
            _add("embedder_embed", end - start)
            current = _state["current"]
            if current is not None:
                current["embed_return_at"] = end

    local.LocalEmbedder.embed = timed_embed  # type: ignore[method-assign]
    for model in (local.E5Small, local.MiniLM, local.BgeSmallEn):  # the composite calls one of these
        encode = model.encode

        def timed_encode(self: Any, texts: Any, _encode: Any = encode) -> Any:
            _mark("encode_start_at")
            cpu = time.thread_time_ns()
            try:
                return _encode(self, texts)
            finally:
                _mark("encode_end_at")
                _add("encode_thread_cpu", time.thread_time_ns() - cpu)

        model.encode = timed_encode  # type: ignore[method-assign]
    _wrap(local.E5Small, "_mean_hidden", "engine_call")
    atexit.register(_dump)


def main() -> int:
    install()
    from strata_runtime.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
