"""Reading OpenAI chat messages, shared by the gateway, providers and the cache."""

from __future__ import annotations

from typing import Any


def text_of(message: Any) -> str:
    """The text of a message: a string content, or the text parts of a multi-part content."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""
