"""MCP servers as real processes, and configs to reach them: the demo server (tests/support/mcp_servers/
demo.py, ours) and two we did not write, the reference `time` server (PyPI `mcp-server-time`, the
Python SDK) and the reference `everything` server (npm, the TypeScript SDK; hack/mcp-everything.sh)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

from tests.support.processes import stop_process
from tests.support.runtime_process import REPO_ROOT, free_port

DEMO_MODULE = "tests.support.mcp_servers.demo"


def demo_env(workdir: Path) -> dict[str, str]:
    """What a demo server process needs: the repository importable, its call log in `workdir`."""
    return {"PYTHONPATH": str(REPO_ROOT), "MCP_DEMO_DIR": str(workdir)}


def stdio_server_config(name: str, workdir: Path, **extra: Any) -> dict[str, Any]:
    return {"name": name, "transport": "stdio", "command": [sys.executable, "-m", DEMO_MODULE, "stdio", "--name", name],
            "env": demo_env(workdir), **extra}


def time_server_config(name: str = "time", **extra: Any) -> dict[str, Any]:
    """The reference time server over stdio, its local timezone fixed (it names it in its tool descriptions)."""
    return {"name": name, "transport": "stdio",
            "command": [sys.executable, "-m", "mcp_server_time", "--local-timezone", "Europe/Paris"], **extra}


@cache
def everything_install() -> Path:
    """The `everything` server's npm install (hack/mcp-everything.sh: once, then from ~/.cache/strata)."""
    done = subprocess.run(["bash", str(REPO_ROOT / "hack" / "mcp-everything.sh")], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"hack/mcp-everything.sh failed ({done.returncode}): {done.stderr[-2000:]}")
    return Path(done.stdout.strip())


def everything_program() -> str:
    return str(everything_install() / "node_modules" / ".bin" / "mcp-server-everything")


def everything_stdio_config(name: str = "every", **extra: Any) -> dict[str, Any]:
    return {"name": name, "transport": "stdio", "command": [everything_program(), "stdio"], **extra}


class DemoHttpServer:
    """`demo.py http` on a port of its own; `restart()` keeps the port (a server coming back)."""

    def __init__(self, workdir: Path, name: str = "web", port: int | None = None):
        self.workdir = workdir
        self.name = name
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"name": self.name, "transport": "http", "url": self.url, **extra}

    def start(self, timeout: float = 60.0) -> DemoHttpServer:
        log = (self.workdir / f"mcp-{self.name}-{self.port}.log").open("ab")
        self.process = subprocess.Popen(self.command(), cwd=REPO_ROOT, env={**os.environ, **self.env()}, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"MCP server {self.name} exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"MCP server {self.name} did not listen within {timeout}s")

    def command(self) -> list[str]:
        return [sys.executable, "-m", DEMO_MODULE, "http", "--port", str(self.port), "--name", self.name]

    def env(self) -> dict[str, str]:
        return demo_env(self.workdir)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> DemoHttpServer:
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 5)


class EverythingHttpServer(DemoHttpServer):
    """The `everything` server over streamable HTTP (stateful: it issues `Mcp-Session-Id`s, kept in memory)."""

    def command(self) -> list[str]:
        return [everything_program(), "streamableHttp"]

    def env(self) -> dict[str, str]:
        return {"PORT": str(self.port)}


def wait_for_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)
