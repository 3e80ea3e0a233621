"""Parsed agent definitions, cached and shared by content hash.

The hash is MD5 over the stable JSON (sorted keys, camelCase, no whitespace) of the agent's
*effective definition*: every field of the agent except its `id` and `tenant` (system prompt,
model, skills, tools, limits, caching flag), with defaults filled in. So N tenants whose
chatbots are made from one template share one `ParsedConfig`; each (tenant, chatbot) only
holds a shallow copy that carries its own id and tenant. A client computes the same value
from the definition it sent and passes it as `md5_checksum`.

A `ParsedConfig` is the validated definition plus its guard review (rules, and the optional
LLM pass). It is persisted in Redis under `<prefix>:agentcfg:{<hash>}` (one key per hash,
hash-tagged, so every command touches one slot of a Cluster) with a TTL renewed on read: a
pod that meets a hash another pod already parsed adopts that review instead of redoing it.
Two pods persisting the same hash race on `SET NX`; the loser adopts the winner's value, so
every pod reports the same review. Redis being down only costs the sharing: the pod parses
locally and keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from strata_runtime.agents.guard import ConfigGuard, GuardReport, check_rules
from strata_runtime.config import AgentConfig, ConfigError, agent_definition, canonical_json

if TYPE_CHECKING:
    from strata_runtime.stores.redis import RedisConnector

log = logging.getLogger("strata.agents")

IDENTITY_FIELDS = frozenset({"id", "tenant"})
SCHEMA_VERSION = "1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def definition_of(agent: AgentConfig) -> dict[str, Any]:
    return agent.model_dump(mode="json", by_alias=True, exclude=set(IDENTITY_FIELDS))


def definition_hash(agent: AgentConfig) -> str:
    """MD5 of the effective definition (not the tenant or chatbot id)."""
    return _hash_and_size(agent)[0]


def _hash_and_size(agent: AgentConfig) -> tuple[str, int]:
    body = agent_definition(agent)
    return hashlib.md5(body, usedforsecurity=False).hexdigest(), len(body)


def raw_key(raw: Mapping[str, Any]) -> str | None:
    """Hash of a definition exactly as written (before defaults): the cheap first-level key.
    None when it is not plain JSON data (e.g. a YAML set): such input is only ever validated."""
    body = {k: v for k, v in raw.items() if k not in IDENTITY_FIELDS}
    try:
        return hashlib.md5(canonical_json(body), usedforsecurity=False).hexdigest()
    except TypeError:
        return None


def validate_agent(raw: Any, *, where: str) -> AgentConfig:
    """An agent definition from untrusted input; the error names every offending field path."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: an agent definition must be a mapping")
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{where}.{'.'.join(str(p) for p in item['loc'])}: {item['msg']}".rstrip(".")
                 for item in e.errors(include_url=False, include_input=False)]
        raise ConfigError("; ".join(lines)) from None


@dataclass(frozen=True, eq=False)
class ParsedConfig:
    config_hash: str
    template: AgentConfig  # id/tenant are those of the first definition seen with this hash
    guard: GuardReport
    size_bytes: int
    parsed_at: float = field(default_factory=time.time)
    from_redis: bool = False

    def bind(self, tenant: str, agent_id: str) -> AgentConfig:
        """The definition as (tenant, agent_id): a shallow copy sharing prompts, skills and tools."""
        if self.template.tenant == tenant and self.template.id == agent_id:
            return self.template
        return self.template.model_copy(update={"tenant": tenant, "id": agent_id})


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    preheated: int = 0
    evictions: int = 0
    redis_hits: int = 0
    redis_errors: int = 0
    persisted: int = 0
    persist_races: int = 0
    parse_failures: int = 0


class ParseCache:
    def __init__(self, guard: ConfigGuard, *, redis: RedisConnector | None = None, ttl_seconds: int = 86400,
                 known_tools: Callable[[], frozenset[str] | None] = lambda: None):
        self.guard = guard
        self.redis = redis
        self.ttl_seconds = ttl_seconds
        self._known_tools = known_tools
        self._parsed: dict[str, ParsedConfig] = {}
        self._by_raw: dict[str, str] = {}
        self._inflight: dict[str, asyncio.Future[ParsedConfig]] = {}
        self.counters = CacheCounters()

    # lookups ---------------------------------------------------------------------------------
    def peek(self, digest: str) -> ParsedConfig | None:
        return self._parsed.get(digest)

    def hit_raw(self, raw: Mapping[str, Any]) -> tuple[AgentConfig, ParsedConfig] | None:
        """A definition exactly as written that was parsed before: no validation, no review."""
        key = raw_key(raw)
        digest = self._by_raw.get(key) if key else None
        parsed = self._parsed.get(digest) if digest else None
        tenant, agent_id = raw.get("tenant"), raw.get("id")
        if parsed is None or not isinstance(tenant, str) or not isinstance(agent_id, str):
            return None
        if not _NAME.match(tenant) or not _NAME.match(agent_id):
            return None
        self.counters.hits += 1
        return parsed.bind(tenant, agent_id), parsed

    async def parse(self, raw: Mapping[str, Any], *, where: str = "agent") -> tuple[AgentConfig, ParsedConfig]:
        """A raw definition (file, API): cached by its written form, then by its effective hash."""
        found = self.hit_raw(raw)
        if found is not None:
            return found
        try:
            agent = validate_agent(raw, where=where)
        except ConfigError:
            self.counters.parse_failures += 1
            raise
        parsed = await self.load(agent)
        key = raw_key(raw)
        if key is not None:
            self._by_raw[key] = parsed.config_hash
        return parsed.bind(agent.tenant, agent.id), parsed

    async def load(self, agent: AgentConfig) -> ParsedConfig:
        """The parsed config of a validated agent: memory, then Redis, then a new review."""
        digest, size = _hash_and_size(agent)
        parsed = self._parsed.get(digest)
        if parsed is not None:
            self.counters.hits += 1
            return parsed
        pending = self._inflight.get(digest)
        if pending is not None:  # another coroutine of this pod is parsing the same hash
            self.counters.hits += 1
            return await asyncio.shield(pending)
        self.counters.misses += 1
        future: asyncio.Future[ParsedConfig] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            parsed = await self._parse_new(agent, digest, size)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._inflight.pop(digest, None)
        future.set_result(parsed)
        self._parsed[digest] = parsed
        return parsed

    def load_local(self, agent: AgentConfig) -> ParsedConfig:
        """Synchronous fallback before start-up: rules only, nothing persisted."""
        digest, size = _hash_and_size(agent)
        parsed = self._parsed.get(digest)
        if parsed is not None:
            self.counters.hits += 1
            return parsed
        self.counters.misses += 1
        findings = check_rules(agent, known_tools=self._known_tools(), max_prompt_chars=self.guard.max_prompt_chars)
        parsed = ParsedConfig(digest, agent, GuardReport(tuple(findings)), size)
        self._parsed[digest] = parsed
        return parsed

    async def _parse_new(self, agent: AgentConfig, digest: str, size: int) -> ParsedConfig:
        stored = await self._redis_get(digest)
        if stored is not None:
            self.counters.redis_hits += 1
            return ParsedConfig(digest, agent, stored, size, from_redis=True)
        try:
            report = await self.guard.review(agent, self._known_tools())
        except Exception as e:
            self.counters.parse_failures += 1
            raise ConfigError(f"agents[{agent.tenant}/{agent.id}]: parsing failed: {type(e).__name__}: {e}") from e
        winner = await self._redis_put(digest, report)
        return ParsedConfig(digest, agent, winner or report, size)

    # redis -------------------------------------------------------------------------------------
    def _key(self, digest: str) -> str:
        assert self.redis is not None
        return self.redis.key("agentcfg", "{" + digest + "}")

    async def _redis_get(self, digest: str) -> GuardReport | None:
        client = self.redis.client if self.redis is not None else None
        if client is None:
            return None
        try:
            raw = await client.getex(self._key(digest), ex=self.ttl_seconds)
            return _decode(raw) if raw is not None else None
        except Exception as e:
            self._redis_failed(e)
            return None

    async def _redis_put(self, digest: str, report: GuardReport) -> GuardReport | None:
        """Persist; returns the value another pod persisted first (adopted), else None."""
        client = self.redis.client if self.redis is not None else None
        if client is None:
            return None
        value = orjson.dumps({"schema": SCHEMA_VERSION, "guard": report.to_json()})
        try:
            if await client.set(self._key(digest), value, ex=self.ttl_seconds, nx=True):
                self.counters.persisted += 1
                return None
            self.counters.persist_races += 1
            existing = await client.get(self._key(digest))
            return _decode(existing) if existing is not None else None
        except Exception as e:
            self._redis_failed(e)
            return None

    def _redis_failed(self, error: BaseException) -> None:
        self.counters.redis_errors += 1
        log.warning("parsed-config store unreachable; parsing locally", extra={"error": type(error).__name__})
        if self.redis is not None:
            self.redis.report_failure(error)

    # housekeeping -------------------------------------------------------------------------------
    def retain(self, in_use: set[str]) -> int:
        """Drop parsed configs no served agent uses; returns how many were dropped."""
        stale = [d for d in self._parsed if d not in in_use]
        for digest in stale:
            del self._parsed[digest]
        if stale:
            self._by_raw = {k: d for k, d in self._by_raw.items() if d in self._parsed}
        self.counters.evictions += len(stale)
        return len(stale)

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {"hits": c.hits, "misses": c.misses, "parsed_configs": len(self._parsed), "preheated": c.preheated,
                "evictions": c.evictions, "bytes": sum(p.size_bytes for p in self._parsed.values()),
                "redis_hits": c.redis_hits, "redis_errors": c.redis_errors, "persisted": c.persisted,
                "persist_races": c.persist_races, "parse_failures": c.parse_failures,
                "llm_reviews": self.guard.llm_calls}


def _decode(raw: bytes | str) -> GuardReport | None:
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
            return None
        return GuardReport.from_json(data["guard"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # an entry from another version or damaged: parse again
