"""`strata-runtime check`: what a valid config would run, in a few lines a person reads.

Secrets are only ever named by reference (the environment variable or file that holds them);
a URL written inline loses its user and password before it is printed.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from strata_runtime.agents.guard import check_rules
from strata_runtime.config import RuntimeConfig, agent_definition_hash


def without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _where(value: str | None, env: str | None, default: str = "not set") -> str:
    if env:
        return f"${env}"
    return without_credentials(value) if value else default


def _stores(config: RuntimeConfig) -> list[str]:
    redis, sql, vectors = config.stores.redis, config.stores.sql, config.stores.vectors
    cluster = ", cluster" if redis.cluster else ""
    return [
        f"  redis    {redis.backend} ({_where(redis.url, redis.url_env)}{cluster}, prefix {redis.key_prefix!r})",
        f"  sql      {sql.backend} (postgres {_where(None, sql.dsn_env, 'dsnEnv not set')}, sqlite {sql.sqlite_path})",
        f"  vectors  {vectors.backend} ({_where(vectors.uri, vectors.uri_env)})",
    ]


def _models(config: RuntimeConfig) -> list[str]:
    lines = []
    for m in config.models:
        upstream = f" -> {m.upstream_model}" if m.upstream_model else ""
        where = f" at {without_credentials(m.base_url)}" if m.base_url else ""
        key = f", key ${m.api_key_env}" if m.api_key_env else (f", key file {m.api_key_file}" if m.api_key_file else "")
        fallbacks = f", fallbacks {', '.join(m.fallbacks)}" if m.fallbacks else ""
        lines.append(f"  {m.name}: {m.provider}{upstream}{where}{key}{fallbacks}")
    return lines or ["  (none)"]


def _agents(config: RuntimeConfig) -> list[str]:
    lines = []
    known_tools = frozenset(t.id for t in config.tools)
    settings = config.agent_manager
    for a in config.agents:
        skills = ", ".join(s.name for s in a.skills) or "none"
        tools = ", ".join(a.tools) or "none"
        findings = check_rules(a, known_tools=known_tools, max_prompt_chars=settings.max_prompt_chars)
        guard = "; ".join(f"{f.field}: {f.code}" for f in findings) or "ok"
        lines.append(f"  {a.id} (tenant {a.tenant}): model {a.model}; skills {skills}; tools {tools}; "
                     f"hash {agent_definition_hash(a)}; guard ({settings.guard}) {guard}")
    if settings.definitions_path:
        lines.append(f"  + definitions watched at {settings.definitions_path}")
    return lines or ["  (none)"]


def _policies(config: RuntimeConfig) -> list[str]:
    cache, routing, limits, memory = config.cache, config.routing, config.rate_limits, config.memory
    if cache.enabled:
        exact = f"exact {'on' if cache.exact.enabled else 'off'}"
        semantic = f"semantic on ({_semantic_check(config)})" if cache.semantic.enabled else "semantic off"
        cache_line = f"  cache    {cache.backend}, scope {cache.scope}: {exact}, {semantic}"
    else:
        cache_line = "  cache    off"
    classifier = routing.classifier.model or "the agent's model"
    return [
        cache_line,
        f"  routing  {len(routing.rules)} rule(s), classifier {classifier}",
        f"  limits   per agent {limits.per_agent.rpm or '-'} rpm / {limits.per_agent.tpm or '-'} tpm, "
        f"per tenant {limits.per_tenant.rpm or '-'} rpm / {limits.per_tenant.tpm or '-'} tpm",
        f"  memory   {memory.buffer_turns} turns buffered, long-term "
        f"{'on' if memory.long_term.enabled else 'off'}",
    ]


def describe(config: RuntimeConfig) -> list[str]:
    """The lines `strata-runtime check` prints for a valid config."""
    server, auth = config.server, config.auth
    auth_line = f"api keys ({len(auth.api_keys)})" if auth.mode == "apiKey" else "none (every caller trusted)"
    return [
        f"server   {server.host}:{server.port}, drain {server.drain_seconds:g} s, auth {auth_line}",
        f"embedder {config.embedder.provider} {config.embedder.model}{_weights(config)}",
        "stores", *_stores(config),
        f"models ({len(config.models)})", *_models(config),
        f"agents ({len(config.agents)})", *_agents(config),
        f"tools {len(config.tools)}, MCP servers {len(config.mcp_servers)}",
        "policies", *_policies(config),
    ]


def _weights(config: RuntimeConfig) -> str:
    """A local model whose weights the build fetches (bge): whether they are installed here."""
    from strata_runtime.embeddings import bge
    from strata_runtime.embeddings.local import LOCAL_MODEL

    if config.embedder.provider != "local" or bge.NAME not in LOCAL_MODEL[config.embedder.model].name:
        return ""
    try:
        bge.weight_files()
    except bge.WeightsMissing as e:
        return f" (NOT INSTALLED, the runtime will not start: {e})"
    return f" (weights in {bge.models_dir()})"


def _semantic_check(config: RuntimeConfig) -> str:
    """How semantic candidates are checked: the fitted verifier, or one cosine threshold."""
    from strata_runtime.cache.verifier import verifier_for
    from strata_runtime.embeddings.e5 import NAME as E5_NAME
    from strata_runtime.embeddings.local import E5_NAMES

    semantic = config.cache.semantic
    fitted = (config.embedder.provider == "local" and config.embedder.model in E5_NAMES
              and verifier_for(E5_NAME, semantic.max_wrong_hit_rate) is not None)
    if not fitted:
        return f"threshold {semantic.threshold if semantic.threshold is not None else 0.93}"
    floor = f", min cosine {semantic.threshold}" if semantic.threshold is not None else ""
    return f"verifier, maxWrongHitRate {semantic.max_wrong_hit_rate}{floor}"
