"""Token estimates for reserving rate-limit budget before the upstream says the real count.

Deliberately on the high side (UTF-8 bytes / 3 + 4 per message): an English token is
about 4 characters and a CJK character about one token (3 bytes), so the reservation
rarely falls short; the real usage reconciles the difference after the call.
"""

from __future__ import annotations

from typing import Any

import orjson

from strata_runtime.messages import text_of

PER_MESSAGE = 4
DEFAULT_COMPLETION_RESERVE = 512  # reserved when the request sets no max_tokens


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    total = 0
    for message in body.get("messages") or ():
        total += len(text_of(message).encode()) // 3 + PER_MESSAGE
        if isinstance(message, dict) and message.get("tool_calls"):
            total += len(orjson.dumps(message["tool_calls"])) // 3
    if body.get("tools"):
        total += len(orjson.dumps(body["tools"])) // 3
    return total


def completion_allowance(body: dict[str, Any]) -> int:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    return limit if isinstance(limit, int) and limit > 0 else DEFAULT_COMPLETION_RESERVE


def estimate_request_tokens(body: dict[str, Any]) -> int:
    n = body.get("n")
    choices = n if isinstance(n, int) and n > 1 else 1
    return estimate_prompt_tokens(body) + completion_allowance(body) * choices


def estimated_usage(prompt_tokens: int, completion_chars: int) -> dict[str, Any]:
    """The usage of an answer whose upstream gave none (about 4 characters a token), marked estimated."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_chars // 4 + 1, "estimated": True}


def estimate_embedding_tokens(inputs: list[str]) -> int:
    return sum(len(t.encode()) // 3 + 1 for t in inputs)
