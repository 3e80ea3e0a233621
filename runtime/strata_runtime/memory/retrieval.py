"""Deciding whether long-term memory is needed, and building the prompt from the layers.

The input guard is deliberately cheap (regular expressions, no model call): recall costs an
embedding and a vector search, so it runs only when the message refers to the past, asks the
agent to remember, or the session already has archived summaries whose detail may matter.
"""

from __future__ import annotations

import re
from typing import Any

from strata_runtime.memory.l3 import Memory
from strata_runtime.memory.state import SessionState

_PAST = re.compile(
    r"\b(remember|recall|remind|forgot|forget|last\s+time|earlier|before|previous(ly)?|already\s+told|"
    r"we\s+(talked|discussed|spoke|said)|you\s+(said|told|mentioned|suggested)|i\s+(said|told|mentioned)|"
    r"again|history|ago|yesterday|last\s+(week|month|year|session))\b"
    r"|之前|上次|以前|记得|记住|刚才|曾经|那次|上回",
    re.IGNORECASE,
)


def needs_long_term(message: str, state: SessionState) -> bool:
    return state.archived_batches > 0 or bool(_PAST.search(message))


def build_messages(*, system_prompt: str, state: SessionState, recalled: list[Memory], message: str,
                   max_recent: int) -> list[dict[str, Any]]:
    """system prompt + running summary + recalled memories + recent turns + the new message."""
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    if state.summary:
        messages.append({"role": "system", "content": f"Summary of the conversation so far:\n{state.summary}"})
    seen = {state.summary}
    notes = [m.content for m in recalled if m.content not in seen]
    if notes:
        messages.append({"role": "system", "content": "Relevant memories:\n" + "\n".join(f"- {n}" for n in notes)})
    recent = [t for t in state.buffered() if t.seq + 1 not in state.pending and t.seq not in state.pending]
    for turn in recent[-max_recent:]:
        messages.append({"role": turn.role, "content": turn.content})
    messages.append({"role": "user", "content": message})
    return messages


# A running summary is fed into the next summary request and into every prompt of its session, so
# its size is bounded: the model is asked for at most SUMMARY_MAX_TOKENS, and what it returns is
# kept to SUMMARY_MAX_CHARS (a provider that ignores max_tokens). Unbounded, a summary that restates
# the earlier one grows with every batch, and so do the prompts, the Redis checkpoint and L3 rows.
SUMMARY_MAX_TOKENS = 512
SUMMARY_MAX_CHARS = 4096


def summary_text(response: dict[str, Any]) -> str:
    """The summary a summary request returned, stripped and capped at SUMMARY_MAX_CHARS."""
    content = str(response["choices"][0]["message"].get("content") or "").strip()
    return content[:SUMMARY_MAX_CHARS]


def summary_request(model: str, previous: str, turns: list[dict[str, Any]]) -> dict[str, Any]:
    transcript = "\n".join(f"{t['role']}: {t['content']}" for t in turns)
    prompt = ("Summarise this conversation for long-term memory. Keep facts, names, numbers, decisions and "
              "open questions; be concise.\n")
    if previous:
        prompt += f"\nEarlier summary:\n{previous}\n"
    prompt += f"\nConversation:\n{transcript}"
    return {"model": model, "messages": [{"role": "system", "content": "You write conversation summaries."},
                                         {"role": "user", "content": prompt}],
            "temperature": 0, "max_tokens": SUMMARY_MAX_TOKENS}
