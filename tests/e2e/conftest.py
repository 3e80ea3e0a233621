"""E2E fixtures: real `strata-runtime` processes started from a config dict.

    def test_x(start_runtime, openai_upstream):
        rt = start_runtime({...config...}, env={"STRATA_KEY_ACME": "k"})
        rt.base_url  # http://127.0.0.1:PORT, already answering /readyz with 200

Every process started is stopped (SIGTERM, then SIGKILL) when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess

StartRuntime = Callable[..., RuntimeProcess]


@pytest.fixture
def http(runtime: RuntimeProcess, openai_upstream: UpstreamServer) -> Iterator[httpx.Client]:
    """A client on the module's `runtime` fixture; the upstream's knobs and stats are reset first."""
    with httpx.Client(base_url=runtime.base_url, timeout=30) as client:
        yield client


@pytest.fixture
def start_runtime(tmp_path: Path) -> Iterator[StartRuntime]:
    started: list[RuntimeProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None, wait_ready: bool = True,
              timeout: float = 60.0) -> RuntimeProcess:
        process = RuntimeProcess(config, tmp_path, env=env)
        started.append(process)
        return process.start(wait_ready=wait_ready, timeout=timeout)

    yield start
    for process in started:
        process.stop(timeout=15)


def gateway_config(tmp_path: Path, upstream_base_url: str, **overrides: Any) -> dict[str, Any]:
    """Embedded backends, API-key auth for tenants acme/globex, two models on the upstream fixture."""
    config: dict[str, Any] = {
        "server": {"drainSeconds": 15},
        "auth": {"mode": "apiKey", "apiKeys": [{"tenant": "acme", "keyEnv": "STRATA_KEY_ACME"},
                                               {"tenant": "globex", "keyEnv": "STRATA_KEY_GLOBEX"}],
                 "internalTokenEnv": "STRATA_INTERNAL_TOKEN"},
        "stores": {"redis": {"backend": "memory"},
                   "sql": {"backend": "sqlite", "sqlitePath": str(tmp_path / "strata.db")},
                   "vectors": {"backend": "memory"}},
        "cache": {"enabled": False},
        "models": [
            {"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream_base_url,
             "apiKeyEnv": "UPSTREAM_KEY", "maxRetries": 0, "pricing": {"inputPer1M": 0.15, "outputPer1M": 0.6}},
            {"name": "embed", "provider": "openai", "upstreamModel": "text-embedding-3-small",
             "baseUrl": upstream_base_url, "apiKeyEnv": "UPSTREAM_KEY"},
            {"name": "always-429", "provider": "openai", "upstreamModel": "fail-429", "baseUrl": upstream_base_url,
             "maxRetries": 0},
        ],
        "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4o-mini"}],
    }
    config.update(overrides)
    return config


GATEWAY_ENV = {"STRATA_KEY_ACME": "acme-key-123", "STRATA_KEY_GLOBEX": "globex-key-456",
               "STRATA_INTERNAL_TOKEN": "internal-token-789", "UPSTREAM_KEY": "sk-upstream-secret"}
