"""Who is calling: API key → tenant for public routes, a service token for /internal.

Keys are kept only as keyed hashes (HMAC-SHA256), never as the keys themselves. Plain keys are
hashed under one random salt of this process, so a presented key costs one HMAC and one lookup
of its digest, however many tenants there are (a linear scan cost ~1 µs per stored key per
request). The lookup compares digests, which an attacker who does not know the salt cannot steer:
timing reveals neither which tenant a key belongs to nor how much of it matched. Already hashed
keys (below) carry salts of their own: one HMAC per distinct salt, every salt tried, no early
exit. API keys are random tokens, not passwords: a slow KDF would add milliseconds per request
and no safety.

A key source (`keyEnv`/`keyFile`) may hold several keys, one per line, and a tenant may be
listed several times: during a rotation the old and the new key are both valid. A line of the
form `hmac-sha256$<salt hex>$<digest hex>` is an already hashed key, so a Secret need not
hold the key itself (`printf %s "$KEY" | openssl dgst -sha256 -mac HMAC -macopt hexkey:$SALT`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from strata_runtime.config import AuthConfig
from strata_runtime.errors import Forbidden, Unauthorized

log = logging.getLogger("strata.auth")

LOCAL_TENANT = "local"
HASHED_PREFIX = "hmac-sha256$"
_SALT_BYTES = 16


@dataclass(frozen=True)
class Caller:
    tenant: str
    internal: bool = False


@dataclass(frozen=True)
class StoredKey:
    salt: bytes
    digest: bytes
    tenant: str

    @classmethod
    def from_secret(cls, value: str, tenant: str, salt: bytes | None = None) -> StoredKey:
        """A stored key from a plain key (hashed here under `salt`, a fresh one if not given) or an
        `hmac-sha256$…` line (its own salt)."""
        if not value.startswith(HASHED_PREFIX):
            salt = salt or os.urandom(_SALT_BYTES)
            return cls(salt, _digest(salt, value.encode()), tenant)
        _, salt_hex, digest_hex = value.split("$", 2) if value.count("$") == 2 else ("", "", "")
        try:
            salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
        except ValueError:
            salt = digest = b""
        if not salt or len(digest) != hashlib.sha256().digest_size:
            raise ValueError("a hashed key is hmac-sha256$<salt hex>$<64 hex digits of HMAC-SHA256>")
        return cls(salt, digest, tenant)

    def matches(self, presented: bytes) -> bool:
        return hmac.compare_digest(self.digest, _digest(self.salt, presented))


def _digest(salt: bytes, key: bytes) -> bytes:
    return hmac.new(salt, key, hashlib.sha256).digest()


class Authenticator:
    def __init__(self, config: AuthConfig, env: Mapping[str, str]):
        self.mode = config.mode
        plain_salt = os.urandom(_SALT_BYTES)
        # salt -> digest -> tenant; a key listed for several tenants belongs to the last one listed
        self._tenants_by_salt: dict[bytes, dict[bytes, str]] = {}
        for ref in config.api_keys:
            source = ref.key_env or ref.key_file
            lines = _secret_lines(_read_secret(env, ref.key_env, ref.key_file))
            if not lines:
                log.warning("API key for a tenant is not set; that tenant cannot authenticate",
                            extra={"tenant": ref.tenant, "source": source})
            for line in lines:
                try:
                    key = StoredKey.from_secret(line, ref.tenant, plain_salt)
                except ValueError as e:
                    log.warning("ignoring a malformed hashed API key", extra={"tenant": ref.tenant,
                                                                               "source": source, "error": str(e)})
                    continue
                self._tenants_by_salt.setdefault(key.salt, {})[key.digest] = key.tenant
        token = _read_secret(env, config.internal_token_env, None)
        self._internal_token = StoredKey.from_secret(token, "") if token else None
        if self.mode == "none":
            log.warning("auth.mode is none: every caller is trusted (local development only)")
        elif self._internal_token is None:
            log.warning("no internal token configured: /internal endpoints refuse every call")

    def tenant_for_key(self, presented: str) -> str | None:
        candidate = presented.encode()
        found: str | None = None
        for salt, tenants in self._tenants_by_salt.items():  # no early exit: every salt is tried
            tenant = tenants.get(_digest(salt, candidate))
            if tenant is not None:
                found = tenant
        return found

    def public_caller(self, request: Request) -> Caller:
        if self.mode == "none":
            return Caller(tenant=request.headers.get("x-strata-tenant") or LOCAL_TENANT)
        key = _bearer(request) or request.headers.get("x-api-key")
        if not key:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        tenant = self.tenant_for_key(key)
        if tenant is None:
            raise Unauthorized("invalid API key")
        return Caller(tenant=tenant)

    def tenant_of(self, caller: Caller, claimed: str | None, field: str = "tenant_id") -> str:
        """The tenant a request acts for: the key's; a body that names another one is refused.

        With `auth.mode: none` (local development) the claimed tenant is taken as given.
        """
        if claimed is None or claimed == caller.tenant:
            return caller.tenant
        if self.mode == "none":
            return claimed
        raise Forbidden(f"{field} does not match the API key's tenant", field=field)

    def internal_caller(self, request: Request) -> Caller:
        if self.mode == "none":
            return Caller(tenant=LOCAL_TENANT, internal=True)
        presented = request.headers.get("x-strata-internal-token") or _bearer(request)
        if not presented:
            raise Unauthorized("missing internal service token")
        if self._internal_token is None or not self._internal_token.matches(presented.encode()):
            raise Forbidden("invalid internal service token")
        return Caller(tenant="", internal=True)

    def any_caller(self, request: Request) -> Caller:
        """An internal caller when the internal-token header is sent, else a tenant's key."""
        if request.headers.get("x-strata-internal-token") is not None:
            return self.internal_caller(request)
        return self.public_caller(request)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _secret_lines(secret: str | None) -> list[str]:
    return [line.strip() for line in (secret or "").splitlines() if line.strip()]


def _read_secret(env: Mapping[str, str], env_name: str | None, file_path: str | None) -> str | None:
    if env_name:
        return env.get(env_name) or None
    if file_path:
        try:
            return Path(file_path).read_text(encoding="utf-8").strip() or None
        except OSError:
            return None
    return None
