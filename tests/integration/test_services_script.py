"""hack/services.sh itself, on ports and a state directory of its own (never the shared services):
`up` is idempotent, `down` frees every port, and an `up` that fails part-way stops what it had
started (a failed Postgres start once left Redis running, and the next run refused its ports)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "services.sh"


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def own_ports() -> tuple[int, int, int]:
    """Free ports for Redis, the 3 cluster nodes (+ their bus ports at +10000) and Postgres."""
    rng = random.Random()
    for _ in range(200):
        redis, cluster, postgres = rng.randrange(21000, 29000), rng.randrange(31000, 39000), rng.randrange(41000, 49000)
        wanted = [redis, postgres, *(cluster + i for i in range(3)), *(cluster + 10000 + i for i in range(3))]
        if all(port_is_free(p) for p in wanted):
            return redis, cluster, postgres
    raise RuntimeError("no free ports found")


@pytest.fixture
def services_env() -> Iterator[dict[str, str]]:
    """Environment for a private hack/services.sh; `down` and the state directory removed afterwards.
    The directory is under the repository's .cache/, which the postgres OS user can traverse."""
    redis, cluster, postgres = own_ports()
    state = ROOT / ".cache" / f"test-services-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "STRATA_SERVICES_DIR": str(state), "STRATA_REDIS_PORT": str(redis),
           "STRATA_REDIS_CLUSTER_PORT": str(cluster), "STRATA_POSTGRES_PORT": str(postgres)}
    try:
        yield env
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def services(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=300)


def ports(env: dict[str, str]) -> list[int]:
    cluster = int(env["STRATA_REDIS_CLUSTER_PORT"])
    return [int(env["STRATA_REDIS_PORT"]), cluster, cluster + 1, cluster + 2, int(env["STRATA_POSTGRES_PORT"])]


def pids(state: Path) -> dict[str, str]:
    files = [*state.glob("*/redis.pid"), state / "postgres" / "data" / "postmaster.pid"]
    return {str(f.relative_to(state)): f.read_text().split()[0] for f in files if f.exists()}


def test_up_is_idempotent_and_down_frees_every_port(services_env: dict[str, str]) -> None:
    first = services(services_env, "up")
    assert first.returncode == 0, first.stderr
    assert all(listening(p) for p in ports(services_env))
    state = Path(services_env["STRATA_SERVICES_DIR"])
    started = pids(state)
    assert len(started) == 5, started

    again = services(services_env, "up")
    assert again.returncode == 0, again.stderr
    assert "starting" not in again.stderr
    assert pids(state) == started
    assert services(services_env, "status").returncode == 0

    assert services(services_env, "down").returncode == 0
    assert not any(listening(p) for p in ports(services_env))
    assert services(services_env, "status").returncode == 1


def test_an_up_that_fails_part_way_stops_what_it_started(services_env: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "postgres-bin"  # a Postgres whose initdb fails, after both Redis have started
    broken.mkdir()
    for tool in ("initdb", "pg_ctl", "pg_isready", "psql"):
        (broken / tool).write_text("#!/bin/sh\necho broken on purpose >&2\nexit 1\n")
        (broken / tool).chmod(0o755)
    env = {**services_env, "STRATA_POSTGRES_BIN": str(broken)}

    failed = services(env, "up")
    assert failed.returncode != 0
    assert "initdb failed" in failed.stderr
    assert "up failed: stopping what it started (redis cluster)" in failed.stderr
    assert not any(listening(p) for p in ports(env)), failed.stderr
    assert pids(Path(env["STRATA_SERVICES_DIR"])) == {}

    # the next run on the same ports is not refused, and with a working Postgres it comes up
    fixed = services(services_env, "up")
    assert fixed.returncode == 0, fixed.stderr
    assert "we did not start" not in fixed.stderr
