"""Throwaway Redis (standalone or a 3-master Cluster) and Postgres processes that a test may kill.

The services of hack/services.sh are shared by every test run on the machine and must never be
killed; chaos drills start their own copies of the same binaries, on free ports, with data in a
directory of their own. Redis runs with an append-only file fsynced on every write
(``appendfsync always``), as docs/durability.md requires of a Redis that holds sessions: a
SIGKILLed server comes back with every write it acknowledged.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.processes import stop_process
from tests.support.runtime_process import free_port

PG_BIN = Path(os.environ.get("STRATA_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))


def _wait(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached within {timeout}s")


def redis_cli(port: int, *args: str) -> str:
    done = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True,
                          timeout=10, check=False)
    return done.stdout.decode(errors="replace").strip()


CLUSTER_BUS_OFFSET = 10_000  # a cluster node also listens on port + 10000 (its cluster bus)


def cluster_port() -> int:
    """A free port for a Redis Cluster node: its bus port (port + 10000) must be a valid port and
    free too (an ephemeral port above 55535 has none, and redis-server then refuses to start)."""
    for _ in range(200):
        port = free_port()
        if port + CLUSTER_BUS_OFFSET <= 65_535:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair (port, port + 10000) for a Redis Cluster node")


class RedisServer:
    """One redis-server on a free port; `kill()` is SIGKILL, `start()` again reuses port and data."""

    def __init__(self, workdir: Path, *, cluster: bool = False):
        self.port = cluster_port() if cluster else free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        argv = [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port),
                "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--protected-mode", "no", "--logfile", str(self.dir / "redis.log")]
        if self.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000"]
        return argv

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL)
        _wait(lambda: redis_cli(self.port, "ping") == "PONG", 30, f"redis {self.port} answering PING")
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync; what survives is what was acknowledged."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the server hangs; its sockets stay open and connects still complete (the kernel
        accepts them), but nothing is answered until `resume()`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """A clean restart on the same port (SHUTDOWN on SIGTERM, then start): every client
        connection is closed by the server and the data comes back from the append-only file."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.resume()  # a paused server does not act on SIGTERM
            stop_process(self.process, 10)


class RedisCluster:
    """Three masters, no replicas (like hack/services.sh), each with its own append-only file."""

    def __init__(self, workdir: Path):
        self.nodes = [RedisServer(workdir, cluster=True) for _ in range(3)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        seeds = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(["redis-cli", "--cluster", "create", *seeds, "--cluster-replicas", "0", "--cluster-yes"],
                       capture_output=True, timeout=60, check=True)
        self.wait_healthy()
        return self

    def healthy(self) -> bool:
        for node in self.nodes:
            info = redis_cli(node.port, "cluster", "info")
            if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                return False
        return True

    def wait_healthy(self, timeout: float = 60) -> None:
        _wait(self.healthy, timeout, "redis cluster_state:ok on every node")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class PostgresServer:
    """A throwaway Postgres cluster (initdb in a temporary directory, trust auth on loopback)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="strata-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.sockets.mkdir()
        self.log = self.root / "postgres.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:  # postgres refuses to run as root: hand the directory to its OS user
            user = pwd.getpwnam("postgres")
            for path in (self.root, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 120) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        subprocess.run([*prefix, *argv], capture_output=True, timeout=timeout, check=True)

    def start(self) -> PostgresServer:
        if not self.data.exists():
            self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                      "--no-locale", "--auth=trust")
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write("\nlisten_addresses = '127.0.0.1'\nfsync = off\nmax_connections = 100\n"
                           "shared_buffers = 32MB\n")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.sockets}", "start")
        return self

    def crash(self) -> None:
        """`pg_ctl stop -m immediate`: every backend is killed, no checkpoint (recovery on start)."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def _processes(self) -> list[int]:
        """The postmaster and every process it forked (backends, checkpointer, walwriter, ...)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def pause(self) -> None:
        """SIGSTOP to the whole server: statements in flight and new connections hang, nothing fails."""
        for pid in self._processes():
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        if (self.data / "postmaster.pid").exists():
            for pid in self._processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():  # a drill may end while it is down
            self.resume()
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
