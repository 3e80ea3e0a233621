"""What a cached answer is keyed on, and the per-request cache controls.

Exact key: SHA-256 over canonical JSON of the tenant namespace (per scope) + ACL scope and
the whole request body minus the fields that cannot change the answer (`_NOT_ANSWER_FIELDS`).
A denylist, not an allowlist: a parameter we have never heard of (`logit_bias`,
`reasoning_effort`, a provider extension) is part of the key by default, so a new knob can
never make two different answers share an entry.

Context fingerprint (the semantic partition): the same hash with the last user message's
content removed: tenant, model, system prompt, tools, tool_choice, response_format, every
sampling parameter and the whole conversation before the last user turn. Entries are only
ever compared with entries of the same fingerprint (a separate index per fingerprint).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from strata_runtime.errors import ValidationFailed
from strata_runtime.gateway.contract import CallContext

# Fields that change how the answer is delivered or accounted, never what it says.
# `stream` is here on purpose: a streamed and a non-streamed answer are the same answer, and
# the cache converts between the two forms (see cache/streams.py).
_NOT_ANSWER_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "cache", "store"})

Scope = str  # "tenant" | "user" | "shared"


def canonical(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def namespace(ctx: CallContext, scope: Scope) -> dict[str, Any] | None:
    """Who may share an entry; None means the request cannot be cached under this scope."""
    acl = ctx.acl_scope
    if scope == "shared":
        return {"ns": "shared", "acl": acl}
    if scope == "user" and ctx.user:
        return {"ns": "user", "tenant": ctx.tenant, "user": ctx.user, "acl": acl}
    # scope tenant, or scope user for a call that names no end user (the tenant is the only identity)
    return {"ns": "tenant", "tenant": ctx.tenant, "acl": acl}


@dataclass(frozen=True)
class RequestKeys:
    exact: str
    fingerprint: str | None  # None when the request has no semantic form
    query: str | None  # text of the last user message
    model: str


def answer_fields(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _NOT_ANSWER_FIELDS}


def last_user_text(messages: Any) -> str | None:
    """Text of the last message when it is a user message made only of text; else None."""
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
        isinstance(p, dict) and p.get("type") in ("text", "input_text") for p in content
    ):
        return " ".join(str(p.get("text", "")) for p in content)
    return None  # images, audio, files: exact matching only


def request_keys(body: dict[str, Any], ns: dict[str, Any]) -> RequestKeys:
    fields = answer_fields(body)
    exact = sha256_hex(canonical({"ns": ns, "body": fields}))
    messages = fields.get("messages")
    query = last_user_text(messages)
    fingerprint = None
    if query is not None and isinstance(messages, list):
        last = {k: v for k, v in messages[-1].items() if k != "content"}
        context = {**fields, "messages": [*messages[:-1], last]}
        fingerprint = sha256_hex(canonical({"ns": ns, "context": context}))
    return RequestKeys(exact=exact, fingerprint=fingerprint, query=query, model=str(body.get("model", "")))


@dataclass(frozen=True)
class CacheControls:
    """Per-request controls; each one can only make caching stricter than the policy."""

    no_cache: bool = False  # do not answer from the cache (the fresh answer may still be stored)
    no_store: bool = False  # do not store this answer
    ttl_seconds: int | None = None  # shorter lifetime for what this request stores


def pop_controls(body: dict[str, Any]) -> CacheControls:
    """Remove the `cache` field from the body (it must never reach an upstream) and parse it."""
    raw = body.pop("cache", None)
    if raw is None:
        return CacheControls()
    if not isinstance(raw, dict):
        raise ValidationFailed("cache must be an object like {\"no-cache\": true}", field="cache")
    known = {"no-cache", "no_cache", "no-store", "no_store", "ttl"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValidationFailed(f"cache.{unknown[0]} is not a cache control (no-cache, no-store, ttl)",
                               field=f"cache.{unknown[0]}")
    flags = {}
    for name in ("no-cache", "no-store"):
        value = raw.get(name, raw.get(name.replace("-", "_"), False))
        if not isinstance(value, bool):
            raise ValidationFailed(f"cache.{name} must be a boolean", field=f"cache.{name}")
        flags[name] = value
    ttl = raw.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0):
        raise ValidationFailed("cache.ttl must be a non-negative integer (seconds)", field="cache.ttl")
    return CacheControls(no_cache=flags["no-cache"], no_store=flags["no-store"] or ttl == 0,
                         ttl_seconds=ttl or None)


def merge_cache_control_header(body: dict[str, Any], header: str | None) -> None:
    """Fold an HTTP `Cache-Control` header (no-cache, no-store, max-age=N) into `body["cache"]`.

    For the HTTP routes: the stricter of header and body wins.
    """
    if not header:
        return
    current = body.get("cache")
    merged: dict[str, Any] = dict(current) if isinstance(current, dict) else {}
    for directive in header.lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name == "no-cache":
            merged["no-cache"] = True
        elif name == "no-store":
            merged["no-store"] = True
        elif name in ("max-age", "s-maxage") and value.strip().isdigit():
            ttl = int(value.strip())
            prior = merged.get("ttl")
            merged["ttl"] = min(ttl, prior) if isinstance(prior, int) and not isinstance(prior, bool) else ttl
    if isinstance(current, dict) or current is None:
        body["cache"] = merged
