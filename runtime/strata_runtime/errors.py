"""One exception tree for the runtime; every leaf knows its HTTP status and stable code.

    StrataError
    ├── BadRequest (400 bad_request)
    │   └── ValidationFailed (422 validation_failed)
    ├── Unauthorized (401 unauthorized)
    ├── Forbidden (403 forbidden)
    ├── NotFound (404 not_found)
    ├── Conflict (409 conflict)
    ├── PayloadTooLarge (413 payload_too_large)
    ├── RateLimited (429 rate_limited, Retry-After)
    │   └── CascadeLimit (429 cascade_limit: depth, interactions per session or tool fan-out)
    ├── ServiceUnavailable (503 unavailable)
    │   ├── Draining (503 draining)
    │   └── UpstreamBusy (503 upstream_busy, Retry-After: every upstream connection stayed busy)
    └── UpstreamError (502 upstream_error)
        ├── UpstreamTimeout (504 upstream_timeout)
        ├── UpstreamIncomplete (502 upstream_incomplete: the stream ended before the answer did)
        ├── UpstreamTooLarge (502 upstream_response_too_large)
        └── CircuitOpen (503 circuit_open)

Messages are written for the caller: never a stack trace, never a secret.

The body is OpenAI's error shape plus ours: `{"error": {"code", "message", "type", "param"?,
"field"?, "details"?, "request_id"?}}`. `type` is OpenAI's error type for the status; `param`
names the offending field. An upstream's own error may override `code`, `type` and `param`
with allow-listed OpenAI values (`context_length_exceeded`, ...; see
`providers/upstream_errors.py`) so that OpenAI clients see what the upstream said.
"""

from __future__ import annotations

from typing import Any, ClassVar

from strata_runtime.logs import current_request_id


class StrataError(Exception):
    status: ClassVar[int] = 500
    code: str = "internal_error"
    type: str = "server_error"

    def __init__(self, message: str, *, field: str | None = None, details: dict[str, Any] | None = None,
                 code: str | None = None, type: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details or {}
        if code:
            self.code = code
        if type:
            self.type = type
        self.param = param or field

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "type": self.type}
        if self.param:
            error["param"] = self.param
        if self.field:
            error["field"] = self.field
        if self.details:
            error["details"] = self.details
        request_id = current_request_id()
        if request_id:
            error["request_id"] = request_id
        return {"error": error}


class BadRequest(StrataError):
    status = 400
    code = "bad_request"
    type = "invalid_request_error"


class ValidationFailed(BadRequest):
    status = 422
    code = "validation_failed"


class Unauthorized(StrataError):
    status = 401
    code = "unauthorized"
    type = "authentication_error"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(StrataError):
    status = 403
    code = "forbidden"
    type = "permission_error"


class NotFound(StrataError):
    status = 404
    code = "not_found"
    type = "not_found_error"


class Conflict(StrataError):
    status = 409
    code = "conflict"
    type = "invalid_request_error"


class PayloadTooLarge(StrataError):
    status = 413
    code = "payload_too_large"
    type = "invalid_request_error"


class RateLimited(StrataError):
    status = 429
    code = "rate_limited"
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_seconds: float, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, int(self.retry_after_seconds + 0.999)))}


class CascadeLimit(RateLimited):
    """Agents and tools calling each other past a bound (`agent.limits`); `details.limit` says which."""

    code = "cascade_limit"


class ServiceUnavailable(StrataError):
    status = 503
    code = "unavailable"


class Draining(ServiceUnavailable):
    code = "draining"


class UpstreamBusy(ServiceUnavailable):
    code = "upstream_busy"

    def __init__(self, message: str, *, retry_after_seconds: float, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, int(self.retry_after_seconds + 0.999)))}


class UpstreamError(StrataError):
    status = 502
    code = "upstream_error"
    type = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamIncomplete(UpstreamError):
    code = "upstream_incomplete"


class UpstreamTooLarge(UpstreamError):
    code = "upstream_response_too_large"


class CircuitOpen(UpstreamError):
    status = 503
    code = "circuit_open"
