"""Reading request bodies: size-bounded (by `BodyLimits`), depth-checked, then parsed once.

Every route reads its body through here, so every JSON body gets the same checks and the
same 400s: not JSON, not an object, nested too deep, or not matching a route's model. Routes
read bodies themselves rather than through FastAPI body parameters, because FastAPI reads
and parses those before the router's auth dependency runs; `documented_body` puts the body
in the API description all the same.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from strata_runtime.errors import BadRequest, ValidationFailed
from strata_runtime.http_limits import check_json_depth
from strata_runtime.ids import ID_PATTERN
from strata_runtime.services import Services

M = TypeVar("M", bound=BaseModel)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


async def read_raw(request: Request) -> bytes:
    raw = await request.body()
    services: Services = request.app.state.services
    check_json_depth(raw, services.config.server.limits.max_json_depth)
    return raw


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object."""
    raw = await read_raw(request)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


async def read_model(request: Request, model: type[M]) -> M:
    """The body validated against `model`; the first problem is a 422 naming its field."""
    raw = await read_raw(request)
    try:
        parsed = model.model_validate_json(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False)
        first = errors[0] if errors else {"loc": (), "msg": "invalid body"}
        field = ".".join(str(p) for p in first["loc"]) or None
        raise ValidationFailed(f"{field or 'body'}: {first['msg']}", field=field) from None
    _check_numbers(parsed.model_dump(by_alias=True), ())
    return parsed


def _check_numbers(value: Any, path: tuple[str, ...]) -> None:
    """Integers must fit in 64 bits: the JSON parser takes any size, the stores and encoders do not.
    Floats must be finite: the parser takes `NaN`, `Infinity` and `1e400` (not JSON), which would be
    written back as `null`."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
        field = ".".join(path) or None
        raise ValidationFailed(f"{field or 'body'}: integer out of range (64-bit signed)", field=field)
    if isinstance(value, float) and not math.isfinite(value):
        field = ".".join(path) or None
        raise ValidationFailed(f"{field or 'body'}: number must be finite", field=field)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        _check_numbers(item, (*path, str(key)))


def documented_body(schema: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` that describes the JSON body a route reads itself (after auth, through
    this module) in the API description, as a body parameter would."""
    described = schema.model_json_schema() if isinstance(schema, type) else schema
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": described}}}}


_ID = {"type": "string", "pattern": ID_PATTERN}
_MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool", "function"]},
    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}, {"type": "null"}]},
    "name": {"type": "string"}, "tool_call_id": {"type": "string"},
    "tool_calls": {"type": "array", "items": {"type": "object"}}}}
_METADATA = {"type": "object", "properties": {"tenant_id": _ID, "agent_id": _ID, "channel_id": _ID,
                                              "acl_scope": {"type": "string"}}}
# The OpenAI chat body as far as the gateway reads it; any other OpenAI field is passed upstream.
CHAT_BODY: dict[str, Any] = {"type": "object", "required": ["model", "messages"], "properties": {
    "model": {"type": "string", "minLength": 1},
    "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
    "max_tokens": {"type": "integer", "minimum": 1}, "max_completion_tokens": {"type": "integer", "minimum": 1},
    "n": {"type": "integer", "minimum": 1}, "temperature": {"type": "number"},
    "stream": {"type": "boolean"}, "stream_options": {"type": "object"},
    "tools": {"type": "array", "items": {"type": "object"}}, "user": {"type": "string"},
    "tenant_id": _ID, "metadata": _METADATA,
    "cache": {"type": "object", "properties": {"no-cache": {"type": "boolean"}, "no-store": {"type": "boolean"},
                                               "ttl": {"type": "integer", "minimum": 0}}}}}
INTERNAL_CHAT_BODY: dict[str, Any] = {**CHAT_BODY, "required": ["model", "messages", "metadata"], "properties": {
    **CHAT_BODY["properties"], "metadata": {**_METADATA, "required": ["tenant_id"]}}}
EMBEDDINGS_BODY: dict[str, Any] = {"type": "object", "required": ["model", "input"], "properties": {
    "model": {"type": "string", "minLength": 1},
    "input": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]},
    "dimensions": {"type": "integer", "minimum": 1}, "encoding_format": {"type": "string", "enum": ["float", "base64"]},
    "tenant_id": _ID, "metadata": _METADATA}}
