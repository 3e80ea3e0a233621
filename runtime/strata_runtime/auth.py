"""Who is calling: API key → tenant for public routes, a service token for /internal.

Keys are compared in constant time against every configured key, so timing reveals
neither which tenant a key belongs to nor how much of it matched.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from strata_runtime.config import AuthConfig
from strata_runtime.errors import Forbidden, Unauthorized

log = logging.getLogger("strata.auth")

LOCAL_TENANT = "local"


@dataclass(frozen=True)
class Caller:
    tenant: str
    internal: bool = False


class Authenticator:
    def __init__(self, config: AuthConfig, env: Mapping[str, str]):
        self.mode = config.mode
        self._keys: list[tuple[bytes, str]] = []
        for ref in config.api_keys:
            secret = _read_secret(env, ref.key_env, ref.key_file)
            if secret:
                self._keys.append((secret.encode(), ref.tenant))
            else:
                log.warning("API key for a tenant is not set; that tenant cannot authenticate",
                            extra={"tenant": ref.tenant, "source": ref.key_env or ref.key_file})
        token = _read_secret(env, config.internal_token_env, None)
        self._internal_token = token.encode() if token else None
        if self.mode == "none":
            log.warning("auth.mode is none: every caller is trusted (local development only)")
        elif self._internal_token is None:
            log.warning("no internal token configured: /internal endpoints refuse every call")

    def tenant_for_key(self, presented: str) -> str | None:
        candidate = presented.encode()
        found: str | None = None
        for secret, tenant in self._keys:
            if hmac.compare_digest(secret, candidate):
                found = tenant
        return found

    def public_caller(self, request: Request, claimed_tenant: str | None = None) -> Caller:
        if self.mode == "none":
            return Caller(tenant=claimed_tenant or request.headers.get("x-strata-tenant") or LOCAL_TENANT)
        key = _bearer(request) or request.headers.get("x-api-key")
        if not key:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        tenant = self.tenant_for_key(key)
        if tenant is None:
            raise Unauthorized("invalid API key")
        if claimed_tenant is not None and claimed_tenant != tenant:
            raise Forbidden("tenant_id does not match the API key's tenant", field="tenant_id")
        return Caller(tenant=tenant)

    def internal_caller(self, request: Request) -> Caller:
        if self.mode == "none":
            return Caller(tenant=LOCAL_TENANT, internal=True)
        presented = request.headers.get("x-strata-internal-token") or _bearer(request)
        if not presented:
            raise Unauthorized("missing internal service token")
        if self._internal_token is None or not hmac.compare_digest(self._internal_token, presented.encode()):
            raise Forbidden("invalid internal service token")
        return Caller(tenant="", internal=True)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _read_secret(env: Mapping[str, str], env_name: str | None, file_path: str | None) -> str | None:
    if env_name:
        return env.get(env_name) or None
    if file_path:
        try:
            return Path(file_path).read_text(encoding="utf-8").strip() or None
        except OSError:
            return None
    return None
