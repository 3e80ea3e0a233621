"""A real HTTP tool server for tool tests: counts executions per `Idempotency-Key`.

Run as its own process: ``python -m tests.support.tool_server --port 0`` prints
``LISTENING host:port``. A well-behaved tool: a request whose `Idempotency-Key` was already
executed gets the recorded answer back without executing again; one that is executing right now
waits for that execution. Routes (all answer JSON unless said otherwise):

* ``POST /echo`` / ``GET /echo`` — executes: ``{"args": <body or query>, "key": <key>, "n": <count>}``
  (``?delay_ms=`` sleeps before answering, so a runtime can be killed mid-call);
* ``POST /add`` — ``{"sum": a + b}``;
* ``POST /hang`` — never answers; ``POST /big`` — a 10 MB JSON string;
* ``POST /invalid`` — ``200`` with a body that is not JSON; ``POST /fail`` — ``503`` (counted);
* ``GET /redirect?to=URL`` — ``302`` to URL;
* ``GET /_stats`` — ``{"executed": {key: n}, "requests": {key: n}, "paths": {path: n},
  "chains": {"<key> depth=<X-Strata-Depth> chain=<X-Strata-Chain>": n}}`` (requests of executing routes);
  ``POST /_reset`` clears them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
from typing import Any

import orjson
from aiohttp import web

Stats = dict[str, collections.Counter[str]]


def _stats() -> Stats:
    return {"executed": collections.Counter(), "requests": collections.Counter(), "paths": collections.Counter(),
            "chains": collections.Counter()}


async def _args(request: web.Request) -> Any:
    if request.method in ("POST", "PUT", "PATCH"):
        raw = await request.read()
        return orjson.loads(raw) if raw else {}
    return dict(request.query)


def build_app() -> web.Application:
    app = web.Application(client_max_size=20 * 1024 * 1024)
    state: dict[str, Any] = {"stats": _stats(), "done": {}, "running": {}}

    def json(obj: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")

    async def execute(request: web.Request, work: Any) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        stats: Stats = state["stats"]
        stats["requests"][key] += 1
        stats["paths"][request.path] += 1
        depth, chain = request.headers.get("X-Strata-Depth"), request.headers.get("X-Strata-Chain")
        stats["chains"][f"{key} depth={depth} chain={chain}"] += 1
        if key and key in state["done"]:
            return json(state["done"][key])
        if key and key in state["running"]:
            return json(await asyncio.shield(state["running"][key]))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if key:
            state["running"][key] = future
        try:
            result = await work(request, key)
        except BaseException as e:
            state["running"].pop(key, None)
            if not future.done():
                future.set_exception(RuntimeError("execution failed"))
                future.exception()
            raise e
        stats["executed"][key] += 1
        if key:
            state["done"][key] = result
            state["running"].pop(key, None)
        future.set_result(result)
        return json(result)

    async def echo_work(request: web.Request, key: str) -> Any:
        args = await _args(request)
        delay = int(request.query.get("delay_ms", "0"))
        if delay:
            await asyncio.sleep(delay / 1000)
        return {"args": args, "key": key, "n": state["stats"]["executed"][key] + 1}

    async def add_work(request: web.Request, key: str) -> Any:
        args = await _args(request)
        return {"sum": args["a"] + args["b"]}

    async def echo(request: web.Request) -> web.Response:
        return await execute(request, echo_work)

    async def add(request: web.Request) -> web.Response:
        return await execute(request, add_work)

    async def hang(request: web.Request) -> web.Response:
        state["stats"]["paths"][request.path] += 1
        await asyncio.sleep(3600)
        return json({})

    async def big(request: web.Request) -> web.Response:
        return json("x" * (10 * 1024 * 1024))

    async def invalid(request: web.Request) -> web.Response:
        return web.Response(body=b"{not json", content_type="application/json")

    async def fail(request: web.Request) -> web.Response:
        state["stats"]["paths"][request.path] += 1
        state["stats"]["requests"][request.headers.get("Idempotency-Key", "")] += 1
        return json({"error": "down"}, status=503)

    async def redirect(request: web.Request) -> web.Response:
        state["stats"]["paths"][request.path] += 1
        raise web.HTTPFound(request.query["to"])

    async def stats(request: web.Request) -> web.Response:
        return json({k: dict(v) for k, v in state["stats"].items()})

    async def reset(request: web.Request) -> web.Response:
        state["stats"] = _stats()
        state["done"].clear()
        return json({"ok": True})

    app.router.add_route("*", "/echo", echo)
    app.router.add_post("/add", add)
    app.router.add_post("/hang", hang)
    app.router.add_post("/big", big)
    app.router.add_post("/invalid", invalid)
    app.router.add_route("*", "/fail", fail)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    return app


async def _main(host: str, port: int) -> None:
    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    print(f"LISTENING {host}:{bound}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(_main(args.host, args.port))


if __name__ == "__main__":
    main()


class ToolServerProcess:
    """Handle on one ``python -m tests.support.tool_server`` process (started and stopped by a test)."""

    def __init__(self) -> None:
        self.process: Any = None
        self.host = "127.0.0.1"
        self.port = 0

    def start(self) -> ToolServerProcess:
        import os
        import subprocess
        import sys
        from pathlib import Path

        from tests.support.fixtures import REPO_ROOT

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.tool_server", "--port", "0"],
            cwd=Path(REPO_ROOT),
            env=env,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        line = self.process.stdout.readline().decode()
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"tool server did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        from tests.support.processes import stop_process

        proc, self.process = self.process, None
        if proc is not None:
            stop_process(proc, 5)
            proc.stdout.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _call(self, method: str, path: str) -> Any:
        import http.client

        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path)
            return orjson.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stats(self) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = self._call("GET", "/_stats")
        return result

    def reset(self) -> None:
        self._call("POST", "/_reset")
