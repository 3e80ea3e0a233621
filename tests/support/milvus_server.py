"""A throwaway Milvus standalone server that a test may kill: PyPI's `milvus` package (a dev
dependency) ships one as `milvus-server`, which writes a config into its data directory and runs
`milvus run standalone` (with an embedded etcd) as its child.

The server and its child run in a session of their own, so `kill()` (SIGKILL) and `stop()`
reach both by process group; `start()` again reuses the same data directory and proxy port,
like a pod that restarts on its volume.

`milvus-server` checks that a port is free by binding it without SO_REUSEADDR and, when that
fails, silently moves the proxy to the next free port. After a SIGKILL the proxy port sits in
TIME_WAIT for a minute (the dead server's side closed the clients' connections first), so a
restart would come back on another port than the one the runtimes were given. The server is
therefore started through a two-line wrapper whose free-port check sets SO_REUSEADDR, as the
Milvus binary itself does when it listens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.runtime_process import REPO_ROOT, free_port

MILVUS_SERVER = REPO_ROOT / ".venv" / "bin" / "milvus-server"
PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
READY_TIMEOUT_SECONDS = 180.0
_LAUNCH = """
import socket, milvus
def try_bind_port(self, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None
milvus.MilvusServerConfig.try_bind_port = try_bind_port
milvus.main()
"""


class MilvusServer:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.dir = workdir / f"milvus-{self.port}"
        self.dir.mkdir(parents=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MilvusServer:
        """Start the server and wait (bounded) until it answers `list_collections`."""
        if not MILVUS_SERVER.exists():
            raise RuntimeError(f"{MILVUS_SERVER} is missing: install the dev extra (the `milvus` package)")
        self.starts += 1
        with (self.dir / f"server-{self.starts}.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["nice", "-n", "10", str(PYTHON), "-c", _LAUNCH, "--data", str(self.dir / "data"),
                 "--proxy-port", str(self.port)],
                cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        from pymilvus import MilvusClient

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"milvus-server exited with {self.process.returncode}: see {self.dir}")
            if not self._listening():  # (asking pymilvus before that only logs connection tracebacks)
                time.sleep(0.5)
                continue
            try:
                client = MilvusClient(uri=self.uri, timeout=3)
                try:
                    client.list_collections()
                    return
                finally:
                    client.close()
            except Exception as e:
                last = e
                time.sleep(0.5)
        raise TimeoutError(f"milvus-server on {self.port} not answering within {timeout}s ({last!r}): see {self.dir}")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL to the server and its `milvus run standalone` child: no shutdown, no flush."""
        self._signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self, grace_seconds: float = 15.0) -> None:
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace_seconds)
        self._signal_group(signal.SIGKILL)  # the child too, even when the parent already left
        if self.process.poll() is None:
            self.process.wait(10)
