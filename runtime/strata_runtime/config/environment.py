"""Settings the runtime also takes from its environment, under the names operators know them by.

An environment variable overrides the config file's field (the usual way to tune one pod of a
Deployment without a new ConfigMap). A value that is not valid for its field is an invalid config,
reported with the variable's name, never ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# variable -> the field's path in the config file (camelCase, as written there)
ENVIRONMENT_FIELDS: dict[str, tuple[str, ...]] = {
    "AGENT_IDLE_TIMEOUT": ("agentManager", "agentIdleSeconds"),
    "AGENT_CLEANUP_INTERVAL": ("agentManager", "agentCleanupIntervalSeconds"),
    "ENABLE_LLM_PARSING": ("agentManager", "llmParsing", "enabled"),
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class BadEnvironmentValue(ValueError):
    """An environment variable's value is not valid for the setting it overrides."""


def _value(name: str, text: str) -> bool | float:
    word = text.strip().lower()
    if name.startswith("ENABLE_"):
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise BadEnvironmentValue(f"{name}={text!r}: expected true or false")
    try:
        return float(word)
    except ValueError:
        raise BadEnvironmentValue(f"{name}={text!r}: expected a number of seconds") from None


def with_environment(raw: dict[str, Any], env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The raw config with every set variable of ENVIRONMENT_FIELDS written into its field, and which
    field each variable set (field path -> variable), so a validation error can name the variable."""
    applied: dict[str, str] = {}
    for name, path in ENVIRONMENT_FIELDS.items():
        text = env.get(name)
        if text is None or not text.strip():
            continue
        section = raw
        for key in path[:-1]:
            child = section.get(key)
            section[key] = child = dict(child) if isinstance(child, dict) else {}
            section = child
        section[path[-1]] = _value(name, text)
        applied[".".join(path)] = name
    return raw, applied
