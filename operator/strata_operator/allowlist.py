"""The operator's `baseUrl` allow-list: the only origins an AgentDeployment may send a model's API key to.

An AgentDeployment author chooses `runtime.models[].baseUrl` and which Secret fills the model's
`apiKeyEnv`; without a limit they could point the runtime at their own host and receive any
provider key of the namespace as a Bearer token. The cluster administrator (the chart value
`baseUrlAllowList`, the environment variable STRATA_BASE_URL_ALLOW_LIST) lists the origins
allowed everywhere and per namespace; the renderer refuses every other origin.

An entry is an origin, `scheme://host[:port]`; a host `*.example.com` matches every subdomain
of example.com (not example.com itself). Matching compares parsed origins, never string
prefixes, so `https://api.openai.com.evil.example` does not pass as `https://api.openai.com`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

DEFAULT_PORTS = {"http": 80, "https": 443}


class AllowListError(ValueError):
    """The configured allow-list itself is malformed; the message names the entry."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str  # lower case, no trailing dot; may start with "*." in an allow-list entry
    port: int

    def allows(self, other: Origin) -> bool:
        if (self.scheme, self.port) != (other.scheme, other.port):
            return False
        if self.host.startswith("*."):
            return other.host.endswith(self.host[1:])
        return self.host == other.host

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_origin(url: str) -> Origin | None:
    """The origin of a URL, or None when it has no http(s) scheme and host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return Origin(scheme, host, port or DEFAULT_PORTS[scheme])


def _entry(text: str) -> Origin:
    # urlsplit lower-cases the host and keeps a leading "*." intact.
    origin = parse_origin(text)
    wildcard_ok = origin is not None and (
        "*" not in origin.host or (origin.host.startswith("*.") and "*" not in origin.host[2:]))
    if origin is None or not wildcard_ok:
        raise AllowListError(f"baseUrl allow-list entry {text!r} is not scheme://host[:port] (host may start with *.)")
    return origin


@dataclass(frozen=True)
class BaseUrlAllowList:
    """Origins allowed in every namespace plus origins allowed in one namespace only."""

    cluster: tuple[Origin, ...] = ()
    namespaces: Mapping[str, tuple[Origin, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> BaseUrlAllowList:
        """From JSON: {"cluster": ["https://api.openai.com"], "namespaces": {"team-a": ["http://vllm.team-a:8000"]}}."""
        try:
            raw: Any = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            raise AllowListError(f"the baseUrl allow-list is not valid JSON: {e}") from None
        if not isinstance(raw, dict) or not set(raw) <= {"cluster", "namespaces"}:
            raise AllowListError('the baseUrl allow-list must be {"cluster": [...], "namespaces": {...}}')
        cluster = raw.get("cluster") or []
        namespaces = raw.get("namespaces") or {}
        if not isinstance(cluster, list) or not isinstance(namespaces, dict):
            raise AllowListError("baseUrl allow-list: cluster must be a list and namespaces a mapping")
        per_namespace: dict[str, tuple[Origin, ...]] = {}
        for namespace, entries in namespaces.items():
            if not isinstance(entries, list):
                raise AllowListError(f"baseUrl allow-list: namespaces.{namespace} must be a list")
            per_namespace[str(namespace)] = tuple(_entry(str(e)) for e in entries)
        return cls(tuple(_entry(str(e)) for e in cluster), per_namespace)

    def for_namespace(self, namespace: str) -> tuple[Origin, ...]:
        return (*self.cluster, *self.namespaces.get(namespace, ()))


def allowed(url: str, origins: tuple[Origin, ...]) -> bool:
    origin = parse_origin(url)
    return origin is not None and any(entry.allows(origin) for entry in origins)
