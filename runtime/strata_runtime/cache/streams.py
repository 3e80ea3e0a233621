"""Converting between a streamed answer (chunks) and a complete one, for storage and replay.

A streamed answer is stored as the chunks the upstream sent plus the assembled completion;
a stream request replays the stored chunks verbatim (same ids, same split, same order), a
plain request gets the assembled completion. An answer stored from a plain request is
replayed to a stream request as synthesised chunks (role, content, tool calls, finish).
`for_replay` keeps the usage chunk only when asked; the cache service always asks, because the
gateway records usage from it and drops it for clients without `stream_options.include_usage`.
"""

from __future__ import annotations

import time
from typing import Any

JSON = dict[str, Any]


def wants_usage(body: JSON) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def is_usage_chunk(chunk: JSON) -> bool:
    return not chunk.get("choices") and chunk.get("usage") is not None


def assemble(chunks: list[JSON]) -> JSON:
    """The `chat.completion` equivalent of a list of `chat.completion.chunk` objects."""
    choices: dict[int, JSON] = {}
    usage = None
    first: JSON = chunks[0] if chunks else {}
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            slot = choices.setdefault(index, {"index": index, "message": {"role": "assistant", "content": None},
                                              "finish_reason": None, "_tools": {}})
            _merge_delta(slot, choice.get("delta") or {})
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]
    out_choices = []
    for index in sorted(choices):
        slot = choices[index]
        tools = slot.pop("_tools")
        if tools:
            slot["message"]["tool_calls"] = [tools[i] for i in sorted(tools)]
        out_choices.append(slot)
    completion: JSON = {
        "id": first.get("id", ""),
        "object": "chat.completion",
        "created": first.get("created", int(time.time())),
        "model": first.get("model", ""),
        "choices": out_choices,
    }
    if first.get("system_fingerprint"):
        completion["system_fingerprint"] = first["system_fingerprint"]
    if usage is not None:
        completion["usage"] = usage
    return completion


def _merge_delta(slot: JSON, delta: JSON) -> None:
    """One chunk's delta appended to its choice: role, content, refusal and tool-call fragments."""
    message = slot["message"]
    if delta.get("role"):
        message["role"] = delta["role"]
    if delta.get("content") is not None:
        message["content"] = (message["content"] or "") + delta["content"]
    if delta.get("refusal") is not None:
        message["refusal"] = (message.get("refusal") or "") + delta["refusal"]
    for call in delta.get("tool_calls") or []:
        tools: dict[int, JSON] = slot["_tools"]
        entry = tools.setdefault(int(call.get("index", 0)),
                                 {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if call.get("id"):
            entry["id"] = call["id"]
        if call.get("type"):
            entry["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            entry["function"]["name"] += function["name"]
        if function.get("arguments"):
            entry["function"]["arguments"] += function["arguments"]


def synthesise(completion: JSON) -> list[JSON]:
    """Chunks that a stream of this completion would have carried (usage chunk last)."""
    base = {"id": completion.get("id", ""), "object": "chat.completion.chunk",
            "created": completion.get("created", int(time.time())), "model": completion.get("model", "")}
    if completion.get("system_fingerprint"):
        base["system_fingerprint"] = completion["system_fingerprint"]
    chunks: list[JSON] = []
    for choice in completion.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        chunks.append({**base, "choices": [{"index": index, "delta": {"role": message.get("role", "assistant"),
                                                                      "content": ""}, "finish_reason": None}]})
        if message.get("content"):
            chunks.append({**base, "choices": [{"index": index, "delta": {"content": message["content"]},
                                                "finish_reason": None}]})
        if message.get("tool_calls"):
            calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
            chunks.append({**base, "choices": [{"index": index, "delta": {"tool_calls": calls},
                                                "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": index, "delta": {},
                                            "finish_reason": choice.get("finish_reason") or "stop"}]})
    if completion.get("usage") is not None:
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return chunks


def for_replay(chunks: list[JSON], completion: JSON, include_usage: bool) -> list[JSON]:
    """Stored chunks as this request should see them: usage chunk only when asked for."""
    body = [c for c in chunks if not is_usage_chunk(c)]
    if include_usage:
        usage = next((c for c in chunks if is_usage_chunk(c)), None)
        if usage is None and completion.get("usage") is not None:
            last = body[-1] if body else {}
            usage = {"id": last.get("id", completion.get("id", "")), "object": "chat.completion.chunk",
                     "created": last.get("created", completion.get("created", 0)),
                     "model": last.get("model", completion.get("model", "")), "choices": [],
                     "usage": completion["usage"]}
        if usage is not None:
            body.append(usage)
    return body
