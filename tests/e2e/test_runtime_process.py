"""The `strata-runtime` process: config errors, readiness on embedded and required backends, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.support.runtime_process import STRATA_RUNTIME, RuntimeProcess, embedded_config, free_port


def test_a_bad_config_file_names_the_field_and_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("auth: {mode: none}\nserver: {port: seventy}\n")
    result = subprocess.run([str(STRATA_RUNTIME), "--config", str(config)], capture_output=True, text=True, check=False,
                            timeout=60)
    assert result.returncode == 2
    assert "server.port" in result.stderr


def test_the_config_path_comes_from_strata_config_when_no_flag_is_given(tmp_path: Path) -> None:
    result = subprocess.run([str(STRATA_RUNTIME)], capture_output=True, text=True, timeout=60, check=False,
                            env={"STRATA_CONFIG": str(tmp_path / "nope.yaml"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr


def test_embedded_defaults_are_ready_and_report_each_backend_and_the_config_hash(tmp_path: Path) -> None:
    config = embedded_config(tmp_path, stores={"redis": {"backend": "memory"},
                                               "sql": {"backend": "sqlite", "sqlitePath": str(tmp_path / "s.db")},
                                               "vectors": {"backend": "auto", "uri": str(tmp_path / "v.db")}})
    runtime = RuntimeProcess(config, tmp_path).start()
    try:
        status, body = runtime.get("/readyz")
        assert status == 200, body
        assert len(body["configHash"]) == 64
        assert body["backends"]["sql"] == {"kind": "sqlite", "state": "ok", "required": False, "detail": ""}
        assert body["backends"]["vectors"]["kind"] == "milvus-lite"
        assert body["backends"]["vectors"]["state"] == "ok"
        status, _ = runtime.get("/healthz")
        assert status == 200
        status, metrics = runtime.get("/metrics")
        assert status == 200 and 'strata_backend_degraded{backend="redis"} 0.0' in metrics
    finally:
        assert runtime.stop() == 0


def test_a_required_redis_that_is_down_makes_readiness_fail_and_names_redis(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    config = embedded_config(tmp_path, stores={"redis": {"backend": "redis", "url": dead},
                                               "sql": {"backend": "memory"}, "vectors": {"backend": "memory"}})
    runtime = RuntimeProcess(config, tmp_path).start(wait_ready=False)
    try:
        status, body = runtime.get("/readyz")
        assert status == 503
        assert body["backends"]["redis"]["state"] == "down"
        assert "redis" in body["reason"]
        assert dead not in str(body), "readiness must not echo the store URL"
    finally:
        runtime.stop()


def test_auto_redis_that_is_down_is_live_but_not_ready(tmp_path: Path) -> None:
    """Under `auto`, the cache may degrade to memory but sessions may not: a pod that cannot
    persist sessions stays alive (no restart loop) and is taken out of rotation."""
    config = embedded_config(tmp_path, stores={"redis": {"backend": "auto", "url": f"redis://127.0.0.1:{free_port()}"},
                                               "sql": {"backend": "memory"}, "vectors": {"backend": "memory"}})
    runtime = RuntimeProcess(config, tmp_path).start(wait_ready=False)
    try:
        assert runtime.get("/healthz")[0] == 200
        status, body = runtime.get("/readyz")
        assert status == 503
        assert body["backends"]["redis"]["state"] == "degraded"
        _, metrics = runtime.get("/metrics")
        assert 'strata_backend_degraded{backend="redis"} 1.0' in metrics
    finally:
        runtime.stop()


def test_sigterm_exits_cleanly_with_code_zero(tmp_path: Path) -> None:
    runtime = RuntimeProcess(embedded_config(tmp_path), tmp_path).start()
    runtime.signal(signal.SIGTERM)
    assert runtime.process is not None
    assert runtime.process.wait(30) == 0
    assert "draining" in runtime.logs()
