"""Checks on chat and embeddings bodies: bad input is a 400 naming the field, before any I/O."""

from __future__ import annotations

from typing import Any

from strata_runtime.errors import BadRequest

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_EMBEDDING_INPUTS = 2048


def validate_chat_body(body: Any) -> None:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required (a logical model name)", field="model")
    _validate_messages(body.get("messages"))
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise BadRequest(f"{name} must be a positive integer", field=name)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean", field="stream")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise BadRequest("tools must be a list", field="tools")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", field="stream_options")


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", field="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object", field=f"messages.{i}")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:  # a list or object role is not hashable
            raise BadRequest(f"messages[{i}].role must be one of {sorted(_ROLES)}", field=f"messages.{i}.role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts",
                             field=f"messages.{i}.content")


def validate_embeddings_body(body: Any) -> list[str]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required", field="model")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        raise BadRequest("dimensions must be a positive integer", field="dimensions")
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("input must be a non-empty string or list of strings", field="input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise BadRequest(f"at most {MAX_EMBEDDING_INPUTS} inputs per request", field="input")
    if all(isinstance(x, str) for x in inputs):
        return inputs
    # Token-id inputs (lists of ints) only make sense to a remote model with the same tokenizer.
    if all(isinstance(x, int) for x in inputs) or all(isinstance(x, list) for x in inputs):
        return [" ".join(map(str, x)) if isinstance(x, list) else str(x) for x in inputs]
    raise BadRequest("input must be a string or a list of strings", field="input")
