"""The in-process API tier: the real app (routes, middleware, auth, services on embedded
backends) driven through httpx's `ASGITransport`. No server process and no sockets, so a test
takes milliseconds; what needs a real server (request heads, timeouts, connections) is in
tests/e2e.

    async def test_x(api: httpx.AsyncClient) -> None:           # the default app, shared
        r = await api.get("/v1/models", headers=ACME)

    async def test_y(make_api: MakeApi) -> None:                 # an app with other settings
        async with make_api(server={"limits": {"perTenant": {"requests": 1}}}) as api:
            ...

The default config: API keys for tenants `acme` (ACME) and `globex` (GLOBEX), the internal
token (INTERNAL), the offline `demo` model and an agent `support` of `acme`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from strata_runtime.app import create_app
from strata_runtime.config import RuntimeConfig

ENV = {"STRATA_KEY_ACME": "acme-key-123", "STRATA_KEY_GLOBEX": "globex-key-456",
       "STRATA_INTERNAL_TOKEN": "internal-token-789"}
ACME = {"authorization": "Bearer acme-key-123"}
GLOBEX = {"authorization": "Bearer globex-key-456"}
INTERNAL = {"x-strata-internal-token": "internal-token-789"}

MakeApi = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


def api_config(workdir: Path, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "auth": {"mode": "apiKey", "apiKeys": [{"tenant": "acme", "keyEnv": "STRATA_KEY_ACME"},
                                               {"tenant": "globex", "keyEnv": "STRATA_KEY_GLOBEX"}],
                 "internalTokenEnv": "STRATA_INTERNAL_TOKEN"},
        "stores": {"redis": {"backend": "memory"},
                   "sql": {"backend": "sqlite", "sqlitePath": str(workdir / "strata.db")},
                   "vectors": {"backend": "memory"}},
        "cache": {"enabled": False},
        "memory": {"longTerm": {"enabled": False}},
        "models": [{"name": "demo", "provider": "demo"}],
        "agents": [{"id": "support", "tenant": "acme", "model": "demo"}],
    }
    config.update(overrides)
    return config


@asynccontextmanager
async def running_api(config: dict[str, Any], env: dict[str, str] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The app built from `config`, started (lifespan) and stopped around the client."""
    app = create_app(RuntimeConfig.model_validate(config), env=ENV if env is None else env)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://strata.test", timeout=30) as client:
            yield client


@pytest.fixture(scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with running_api(api_config(tmp_path_factory.mktemp("api"))) as client:
        yield client


@pytest.fixture
def make_api(tmp_path: Path) -> MakeApi:
    def make(env: dict[str, str] | None = None, **overrides: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return running_api(api_config(tmp_path, **overrides), env)

    return make
