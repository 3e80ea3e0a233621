"""Hostile and malformed requests against the app in process: clear 4xx JSON, never a 500."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx
import pytest

from tests.api.conftest import ACME, ENV, GLOBEX, INTERNAL, MakeApi

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- bodies: size and nesting --------------------------------------------------------------

async def test_a_declared_body_over_the_route_limit_is_413_before_auth_and_closes(api: httpx.AsyncClient) -> None:
    # No API key at all: the size is refused first, from Content-Length alone.
    response = await api.post("/api/v1/query", content=b"x" * (256 * 1024 + 1),
                              headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"
    assert response.headers["connection"] == "close"


async def test_a_chunked_body_is_cut_off_at_the_limit(api: httpx.AsyncClient) -> None:
    pieces_sent = 0

    async def chunks() -> Any:
        nonlocal pieces_sent
        for _ in range(64):  # 64 x 64 KiB = 4 MiB offered to a 1 MiB route
            pieces_sent += 1
            yield b"x" * 65536

    response = await api.post("/internal/agent-memory/store", content=chunks(), headers=INTERNAL)
    assert response.status_code == 413
    assert error_of(response)["details"]["limit_bytes"] == 1024 * 1024


@pytest.mark.parametrize("path", ["/internal/agent-memory/query", "/internal/agent-memory/store",
                                  "/internal/agent-memory/summarize"])
async def test_agent_memory_routes_have_a_body_limit(api: httpx.AsyncClient, path: str) -> None:
    response = await api.post(path, content=b"{" + b" " * (1024 * 1024) + b"}", headers=INTERNAL)
    assert response.status_code == 413


@pytest.mark.parametrize("depth", [65, 255, 1024, 5000])
@pytest.mark.parametrize(("path", "headers"), [("/v1/chat/completions", ACME), ("/api/v1/query", ACME),
                                               ("/internal/llm/proxy", INTERNAL),
                                               ("/internal/agent-memory/store", INTERNAL)])
async def test_deeply_nested_json_is_a_400(api: httpx.AsyncClient, path: str, headers: dict[str, str],
                                           depth: int) -> None:
    body = b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "extra": ' + nested(depth) + b"}"
    response = await api.post(path, content=body, headers={**headers, "content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "json_too_deep"


async def test_brackets_inside_strings_do_not_count_as_nesting(api: httpx.AsyncClient) -> None:
    text = "[[[[" * 100 + '\\"{{{{' * 100
    body = {"model": "demo", "messages": [{"role": "user", "content": text}]}
    response = await api.post("/v1/chat/completions", json=body, headers=ACME)
    assert response.status_code == 200, response.text


# -- validation: wrong types and encodings name the field ---------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    ({**CHAT, "tenant_id": ["acme"]}, "tenant_id"),
    ({**CHAT, "tenant_id": {"$ne": 1}}, "tenant_id"),
    ({**CHAT, "metadata": {"tenant_id": ["acme"]}}, "metadata.tenant_id"),
    ({**CHAT, "metadata": {"agent_id": ["support"]}}, "metadata.agent_id"),
    ({**CHAT, "metadata": {"channel_id": 7}}, "metadata.channel_id"),
    ({**CHAT, "metadata": "acme"}, "metadata"),
    ({**CHAT, "max_tokens": "12"}, "max_tokens"),
    ({**CHAT, "stream": "yes"}, "stream"),
])
async def test_chat_fields_of_the_wrong_type_are_400_naming_the_field(api: httpx.AsyncClient, body: dict[str, Any],
                                                                      field: str) -> None:
    response = await api.post("/v1/chat/completions", json=body, headers=ACME)
    assert response.status_code == 400, response.text
    assert error_of(response)["field"] == field


@pytest.mark.parametrize(("body", "field"), [
    ({"message": "hi", "session_id": "s1", "chatbot_id": "support", "tenant_id": ["acme"]}, "tenant_id"),
    ({"message": "hi", "session_id": ["s1"], "chatbot_id": "support"}, "session_id"),
    ({"message": "hi", "session_id": "s1", "chatbot_id": "support", "channel_id": "a b"}, "channel_id"),
    ({"message": "hi", "session_id": "s1", "chatbot_id": {"id": 1}}, "chatbot_id"),
])
async def test_query_fields_of_the_wrong_type_name_the_field(api: httpx.AsyncClient, body: dict[str, Any],
                                                             field: str) -> None:
    response = await api.post("/api/v1/query", json=body, headers=ACME)
    assert response.status_code == 422, response.text
    assert error_of(response)["field"] == field


@pytest.mark.parametrize("header", [b"x-strata-agent-id", b"x-strata-acl-scope", b"authorization"])
async def test_non_utf8_and_odd_header_values_are_4xx(api: httpx.AsyncClient, header: bytes) -> None:
    headers = [(b"authorization", b"Bearer acme-key-123"), (b"content-type", b"application/json")]
    headers = [h for h in headers if h[0] != header] + [(header, b"\xff\xfe bad \xc3")]
    response = await api.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    error_of(response)


async def test_a_non_numeric_content_length_is_a_400(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/chat/completions", content=b"{}",
                              headers={**ACME, "content-length": "12abc"})
    assert response.status_code == 400


# -- rate limits: what the server knows --------------------------------------------------------

async def test_inventing_agent_ids_does_not_multiply_the_per_agent_budget(make_api: MakeApi) -> None:
    async with make_api(rateLimits={"perAgent": {"rpm": 5}}) as api:
        statuses = [(await api.post("/v1/chat/completions", json=CHAT,
                                    headers={**ACME, "x-strata-agent-id": f"made-up-{i}"})).status_code
                    for i in range(8)]
        assert statuses.count(200) == 5 and statuses.count(429) == 3, statuses
        # The configured agent has its own budget, untouched by the invented names.
        configured = await api.post("/v1/chat/completions", json=CHAT,
                                    headers={**ACME, "x-strata-agent-id": "support"})
        assert configured.status_code == 200


async def test_a_request_larger_than_the_whole_token_budget_is_400_not_429(make_api: MakeApi) -> None:
    async with make_api(rateLimits={"perTenant": {"tpm": 10_000}}) as api:
        response = await api.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10**15}, headers=ACME)
        assert response.status_code == 400, response.text
        assert "retry-after" not in response.headers
        assert error_of(response)["field"] == "max_tokens"


# -- Last-Event-ID ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1:-3", "1:-2", "-1:0", "1:0:0", "1:1e3", "junk", "1:" + "9" * 19])
async def test_a_malformed_or_negative_last_event_id_is_a_400(api: httpx.AsyncClient, value: str) -> None:
    body = {"message": "hi", "session_id": "resume-me", "chatbot_id": "support", "stream": True}
    response = await api.post("/api/v1/query", json=body, headers={**ACME, "Last-Event-ID": value})
    assert response.status_code == 400, response.text
    assert error_of(response)["field"] == "Last-Event-ID"


# -- auth --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/models"), ("GET", "/v1/models/demo"), ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"), ("POST", "/api/v1/query"), ("GET", "/api/v1/sessions/s1"),
    ("DELETE", "/api/v1/sessions/s1"), ("GET", "/api/v1/usage"),
])
async def test_every_public_route_wants_a_key(api: httpx.AsyncClient, method: str, path: str) -> None:
    response = await api.request(method, path)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/internal/llm/proxy"), ("POST", "/internal/llm/stream"), ("POST", "/internal/llm/batch"),
    ("POST", "/internal/agent-memory/query"), ("POST", "/internal/agent-memory/store"),
    ("POST", "/internal/agent-memory/summarize"), ("GET", "/internal/cache/stats"),
    ("POST", "/internal/cache/invalidate"), ("GET", "/api/v1/config/cache/stats"),
])
async def test_every_internal_route_wants_the_service_token(api: httpx.AsyncClient, method: str, path: str) -> None:
    assert (await api.request(method, path)).status_code == 401
    assert (await api.request(method, path, headers=ACME)).status_code == 403  # a tenant key is not the token


async def test_every_route_is_authenticated_by_its_router() -> None:
    """No route relies on remembering to call auth itself: its router carries the dependency."""
    from fastapi.routing import APIRoute

    from strata_runtime.api import deps
    from strata_runtime.app import create_app
    from strata_runtime.config import RuntimeConfig

    app = create_app(RuntimeConfig.model_validate({"auth": {"mode": "none"}, "server": {"openapi": True}}), env={})
    open_paths = {"/healthz", "/readyz", "/metrics"}
    guards = {deps.public_caller, deps.internal_caller, deps.any_caller}
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path not in open_paths:
            assert {d.call for d in route.dependant.dependencies} & guards, route.path


async def test_api_keys_are_kept_only_as_salted_hashes() -> None:
    from strata_runtime.auth import Authenticator
    from strata_runtime.config import AuthConfig

    config = AuthConfig.model_validate({"apiKeys": [{"tenant": "acme", "keyEnv": "A"},
                                                    {"tenant": "globex", "keyEnv": "B"},
                                                    {"tenant": "initech", "keyEnv": "C"}]})
    env = {"A": "same-key-for-both", "B": "same-key-for-both", "C": "initech-key"}
    auth, other_process = Authenticator(config, env), Authenticator(config, env)
    [(salt, digests)] = auth._tenants_by_salt.items()  # plain keys: one salt, one HMAC per request
    assert all(b"same-key-for-both" not in salt + digest for digest in digests)
    assert "same-key-for-both" not in repr(vars(auth))
    assert salt not in other_process._tenants_by_salt  # a random salt per process: no shared digests
    assert auth.tenant_for_key("same-key-for-both") == "globex"  # the last tenant listed, as before
    assert auth.tenant_for_key("initech-key") == "initech" and auth.tenant_for_key("initech-ke") is None


async def test_rotation_old_and_new_keys_both_work_and_hashed_keys_are_accepted(make_api: MakeApi,
                                                                                tmp_path: Any) -> None:
    salt = bytes(range(16))
    hashed = f"hmac-sha256${salt.hex()}${hmac.new(salt, b'hashed-key', hashlib.sha256).hexdigest()}"
    keys = tmp_path / "acme-keys"
    keys.write_text(f"old-acme-key\nnew-acme-key\n{hashed}\n")
    auth = {"mode": "apiKey", "internalTokenEnv": "STRATA_INTERNAL_TOKEN",
            "apiKeys": [{"tenant": "acme", "keyFile": str(keys)}, {"tenant": "acme", "keyEnv": "STRATA_KEY_ACME"},
                        {"tenant": "globex", "keyEnv": "STRATA_KEY_GLOBEX"}]}
    async with make_api(auth=auth) as api:
        for key in ("old-acme-key", "new-acme-key", "hashed-key", ENV["STRATA_KEY_ACME"]):
            response = await api.get("/api/v1/usage", headers={"authorization": f"Bearer {key}"})
            assert response.status_code == 200, (key, response.text)
        for key in ("old-acme-key\nnew-acme-key", hashed, "old-acme-ke", ""):
            response = await api.get("/v1/models", headers={"x-api-key": key} if key else {})
            assert response.status_code == 401, key
        # The hashed key is a key of acme, not of globex.
        response = await api.get("/api/v1/usage", params={"tenant": "globex"},
                                 headers={"authorization": "Bearer hashed-key"})
        assert response.status_code == 403


# -- docs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
async def test_no_docs_or_api_description_by_default(api: httpx.AsyncClient, path: str) -> None:
    assert (await api.get(path)).status_code == 404
    assert (await api.get(path, headers=ACME)).status_code == 404


async def test_the_api_description_when_switched_on_needs_a_key_and_has_no_page(make_api: MakeApi) -> None:
    async with make_api(server={"openapi": True}) as api:
        assert (await api.get("/openapi.json")).status_code == 401
        described = await api.get("/openapi.json", headers=ACME)
        assert described.status_code == 200 and "/v1/chat/completions" in described.json()["paths"]
        assert (await api.get("/openapi.json", headers=INTERNAL)).status_code == 200
        assert (await api.get("/docs", headers=ACME)).status_code == 404


# -- fairness: per-tenant concurrency ---------------------------------------------------------

async def test_one_tenant_at_its_request_bound_does_not_block_another(make_api: MakeApi) -> None:
    async with make_api(server={"limits": {"perTenant": {"requests": 2, "streams": 1}}}) as api:
        app = api._transport.app  # type: ignore[attr-defined]
        slots = app.state.tenant_slots
        held = [slots.take("acme"), slots.take("acme")]  # two acme requests in flight
        refused = await api.get("/v1/models", headers=ACME)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert error_of(refused)["details"] == {"scope": "tenant", "limit": "concurrent_requests"}
        assert (await api.get("/v1/models", headers=GLOBEX)).status_code == 200
        for slot in held:
            slot.release()
        assert (await api.get("/v1/models", headers=ACME)).status_code == 200
        assert slots.in_flight("acme") == (0, 0)



# -- numbers the stores cannot hold (found by the fuzz run) -----------------------------------------

@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/v1/evolution/versions",
     {"kind": "skill", "name": "greeting", "content": {"n": 2**64}, "author": "fuzz"}, "content.n"),
    ("/api/v1/evolution/versions",
     {"kind": "skill", "name": "greeting", "content": {"list": [1, -(2**63) - 1]}, "author": "fuzz"},
     "content.list.1"),
    ("/api/v1/evolution/rollback", {"kind": "skill", "name": "greeting", "version": 2**70, "author": "fuzz"},
     "version"),
])
async def test_integers_beyond_64_bits_are_422_naming_the_field(api: httpx.AsyncClient, path: str,
                                                               body: dict[str, Any], field: str) -> None:
    response = await api.post(path, json=body, headers={**ACME, **INTERNAL})
    assert response.status_code == 422, response.text
    assert error_of(response)["field"] == field
