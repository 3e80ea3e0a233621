"""What of an upstream's error body may reach the tenant: allow-listed fields, a scrubbed message.

An upstream error body (`{"error": {"message", "type", "code", "param"}}` in OpenAI's shape)
is written by a third party and may quote the API key we sent ("Incorrect API key provided:
sk-...") or anything else. So:

* `type` and `code` pass only when they are in the allow-lists below (OpenAI's documented
  values plus the ones vLLM, Ollama, Azure and Anthropic-compatible servers send); anything
  else is dropped, never echoed.
* `param` passes only when it names a request field we know (`messages[0].content` is fine).
* `message` passes scrubbed: bearer tokens, `sk-...`-style keys, long high-entropy strings and
  the configured key itself become `[redacted]`, and it is cut to `MAX_MESSAGE` characters.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 600

KNOWN_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "rate_limit_error", "insufficient_quota", "server_error", "api_error", "overloaded_error",
    "request_too_large", "tokens", "requests", "invalid_api_key", "service_unavailable",
    "BadRequestError", "NotFoundError", "InternalServerError",  # vLLM
})

KNOWN_CODES = frozenset({
    "context_length_exceeded", "string_above_max_length", "array_above_max_length", "empty_array",
    "invalid_api_key", "invalid_organization", "model_not_found", "deployment_not_found", "DeploymentNotFound",
    "rate_limit_exceeded", "insufficient_quota", "tokens_exceeded", "billing_hard_limit_reached",
    "invalid_value", "invalid_type", "invalid_request_error", "missing_required_parameter",
    "unknown_parameter", "unsupported_parameter", "unsupported_value", "integer_below_min_value",
    "integer_above_max_value", "decimal_below_min_value", "decimal_above_max_value", "invalid_prompt",
    "invalid_image", "invalid_image_url", "content_filter", "content_policy_violation",
    "response_format_not_supported", "server_error", "model_overloaded", "engine_overloaded",
    "service_unavailable", "timeout",
})

# Top-level request fields an upstream may name in `param` (indices and sub-fields may follow).
KNOWN_PARAMS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "stop", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
    "response_format", "seed", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
    "logit_bias", "user", "input", "dimensions", "encoding_format", "modalities", "audio", "prediction",
    "reasoning_effort", "service_tier", "store", "metadata",
})
_PARAM = re.compile(r"^([a-z_]{1,40})((?:\[\d{1,6}\]|\.[A-Za-z_]{1,40}){0,8})$")

_REDACTED = "[redacted]"
_CREDENTIALS = re.compile(
    r"(?i)\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]+"  # an Authorization header value
    r"|\b(?:sk|pk|rk)-[A-Za-z0-9_*.-]{6,}"  # OpenAI/Anthropic/DeepSeek-style keys, masked or not
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{12,}"  # AWS access key ids
    r"|\b(?:ghp|gho|ghs|github_pat|xox[abpr]|hf)_[A-Za-z0-9_]{8,}"  # GitHub, Slack, Hugging Face tokens
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_.-]+"  # JWTs
)
_LONG_TOKEN = re.compile(r"[A-Za-z0-9_+/=]{24,}")  # no "-" or ".": model names and hosts stay readable


@dataclass(frozen=True)
class UpstreamErrorInfo:
    type: str | None = None
    code: str | None = None
    param: str | None = None
    message: str | None = None


def parse_error(data: Any, secrets: Iterable[str] = ()) -> UpstreamErrorInfo:
    """The safe part of an upstream error object (`{"error": {...}}` or the inner object)."""
    error = data.get("error") if isinstance(data, dict) and "error" in data else data
    if isinstance(error, str):
        return UpstreamErrorInfo(message=scrub(error, secrets))
    if not isinstance(error, dict):
        return UpstreamErrorInfo()
    kind, code, param, message = (error.get(k) for k in ("type", "code", "param", "message"))
    return UpstreamErrorInfo(
        type=kind if isinstance(kind, str) and kind in KNOWN_TYPES else None,
        code=code if isinstance(code, str) and code in KNOWN_CODES else None,
        param=param if isinstance(param, str) and _known_param(param) else None,
        message=scrub(message, secrets) if isinstance(message, str) and message else None,
    )


def _known_param(param: str) -> bool:
    match = _PARAM.match(param)
    return match is not None and match.group(1) in KNOWN_PARAMS


def scrub(message: str, secrets: Iterable[str] = ()) -> str:
    """The message with anything credential-like replaced, cut to `MAX_MESSAGE` characters."""
    # The configured key first, in the whole message (an error body or event is size-capped): cut
    # first, a key the cut went through would stay as its first characters.
    for secret in secrets:
        if secret and len(secret) >= 8 and secret in message:
            message = message.replace(secret, _REDACTED)
    text = message[:MAX_MESSAGE * 4]
    text = _CREDENTIALS.sub(_REDACTED, text)
    text = _LONG_TOKEN.sub(lambda m: _REDACTED if _looks_random(m.group()) else m.group(), text)
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def _looks_random(token: str) -> bool:
    """A long run mixing letter cases and digits (a key, a signature), not a word or a path."""
    classes = sum((any(c.islower() for c in token), any(c.isupper() for c in token),
                   any(c.isdigit() for c in token)))
    return classes >= 2 and len(set(token)) >= 12


def retry_after_seconds(value: str | bytes | None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP-date (RFC 9110 10.2.3);
    None when absent or junk. Upstreams (the gateway) and tool servers send both forms."""
    if not value:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
