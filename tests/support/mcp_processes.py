"""The demo MCP server (tests/support/mcp_servers/demo.py) as a real process, and configs to reach it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
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
        self.process = subprocess.Popen(
            [sys.executable, "-m", DEMO_MODULE, "http", "--port", str(self.port), "--name", self.name],
            cwd=REPO_ROOT, env={**os.environ, **demo_env(self.workdir)}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"MCP demo server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"MCP demo server did not listen within {timeout}s")

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


def wait_for_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)
