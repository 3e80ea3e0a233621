"""Reading a config file and hashing it; errors name the offending field in camelCase."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from strata_runtime.config.agents import AgentConfig
from strata_runtime.config.environment import BadEnvironmentValue, with_environment
from strata_runtime.config.runtime import RuntimeConfig


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message says where."""


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> RuntimeConfig:
    """The config file, with the settings `env` overrides (config/environment.py) when it is given."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    raw = raw if raw is not None else {}
    if env is None or not isinstance(raw, dict):
        return parse_config(raw, source=str(path))
    try:
        raw, set_by = with_environment(raw, env)
    except BadEnvironmentValue as e:
        raise ConfigError(f"environment: {e}") from None
    return parse_config(raw, source=str(path), set_by=set_by)


def parse_config(raw: Any, *, source: str = "config", set_by: Mapping[str, str] | None = None) -> RuntimeConfig:
    """`set_by`: field path -> the environment variable that set it, named in an error about it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return RuntimeConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source} is invalid:\n{describe_validation_error(e, set_by or {})}") from None


def describe_validation_error(error: ValidationError, set_by: Mapping[str, str] | None = None) -> str:
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        origin = f" (set by the environment variable {set_by[where]})" if set_by and where in set_by else ""
        lines.append(f"  {where}{origin}: {item['msg']}")
    return "\n".join(lines)


def canonical_json(data: Any) -> bytes:
    """Stable JSON: sorted keys, no whitespace; equal configs hash equally on every pod."""
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def config_hash(config: RuntimeConfig) -> str:
    return hashlib.sha256(canonical_json(config.model_dump(mode="json", by_alias=True))).hexdigest()


def agent_definition(agent: AgentConfig) -> bytes:
    """Stable JSON of an agent's effective definition: every field except its `id` and `tenant`."""
    return canonical_json(agent.model_dump(mode="json", by_alias=True, exclude={"id", "tenant"}))


def agent_definition_hash(agent: AgentConfig) -> str:
    """MD5 of `agent_definition`: equal for every tenant's chatbot made from one template."""
    return hashlib.md5(agent_definition(agent), usedforsecurity=False).hexdigest()


def agents_hash(agents: Iterable[AgentConfig], hashes: Mapping[tuple[str, str], str] | None = None) -> str:
    """One hash of a set of agents (which tenant/id has which definition); the operator and the
    runtime compute it the same way, so a pod's served set can be compared with the desired one."""
    lines = sorted(f"{a.tenant}/{a.id}={hashes[(a.tenant, a.id)] if hashes else agent_definition_hash(a)}"
                   for a in agents)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
