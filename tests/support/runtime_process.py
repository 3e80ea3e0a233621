"""A real `strata-runtime` process started from a config dict, for e2e and chaos tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
STRATA_RUNTIME = REPO_ROOT / ".venv" / "bin" / "strata-runtime"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def embedded_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A minimal valid config on embedded backends (memory Redis, SQLite, memory vectors)."""
    config: dict[str, Any] = {
        "auth": {"mode": "none"},
        "stores": {
            "redis": {"backend": "memory"},
            "sql": {"backend": "sqlite", "sqlitePath": str(tmp_path / "strata.db")},
            "vectors": {"backend": "memory"},
        },
        "models": [{"name": "demo", "provider": "demo"}],
        "agents": [{"id": "support", "tenant": "local", "model": "demo"}],
    }
    config.update(overrides)
    return config


class RuntimeProcess:
    """Runs `strata-runtime --config` on a free port; `stop()` sends SIGTERM and waits."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.workdir = workdir
        self.config_path = workdir / f"runtime-{self.port}.yaml"
        # A test process stops at once on SIGTERM (no Kubernetes hand-over window: nothing routes to
        # it), unless the test sets the window itself.
        server = {"keepAliveDrainSeconds": 0, **config.get("server", {})}
        self.config_path.write_text(yaml.safe_dump({**config, "server": server}))
        self.log_path = workdir / f"runtime-{self.port}.log"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> RuntimeProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(STRATA_RUNTIME), "--config", str(self.config_path), "--host", "127.0.0.1",
                 "--port", str(self.port)],
                cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        self.wait_listening(timeout)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"runtime exited with {self.process.returncode}:\n{self.logs()}")
            try:
                self.get("/healthz")
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"runtime did not listen within {timeout}s:\n{self.logs()}")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = self.get("/readyz")
            if status == 200:
                return
            time.sleep(0.2)
        raise TimeoutError(f"runtime not ready within {timeout}s:\n{self.logs()}")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return self.request("GET", path, headers=headers)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"content-type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None:
            return 0
        return stop_process(self.process, timeout)
