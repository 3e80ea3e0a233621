"""`make run`'s script and sample config answer the requests its screen tells a new user to try."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from tests.support.runtime_process import REPO_ROOT, free_port

SAMPLE = REPO_ROOT / "manifests" / "samples" / "runtime-local.yaml"


def _sample_in(tmp_path: Path) -> Path:
    """The sample as shipped, its SQLite and milvus-lite files moved into the test's directory."""
    config = yaml.safe_load(SAMPLE.read_text())
    config["stores"]["sql"]["sqlitePath"] = str(tmp_path / "strata.db")
    config["stores"]["vectors"]["uri"] = str(tmp_path / "strata-milvus.db")
    path = tmp_path / "runtime-local.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "hack/run.sh exited before the runtime was ready"
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready within {timeout}s")


def test_the_requests_on_the_screen_answer_without_any_service_running(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "STRATA_LOCAL_REDIS_URL"}
    process = subprocess.Popen(["bash", "hack/run.sh", str(_sample_in(tmp_path)), str(port)], cwd=REPO_ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base_url, process)
        answer = httpx.post(f"{base_url}/api/v1/query", timeout=60, json={
            "message": "my card has not arrived", "session_id": "s1", "chatbot_id": "support", "tenant_id": "local"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "completed"
        assert answer.json()["routing"]["skill"] == "card_arrival"
        chat = httpx.post(f"{base_url}/v1/chat/completions", timeout=60, json={
            "model": "demo", "messages": [{"role": "user", "content": "hello"}]})
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode(errors="replace")
    assert "State: " in output and f"http://127.0.0.1:{port}" in output
