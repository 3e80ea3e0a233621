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
    ├── ServiceUnavailable (503 unavailable)
    │   └── Draining (503 draining)
    └── UpstreamError (502 upstream_error)
        ├── UpstreamTimeout (504 upstream_timeout)
        └── CircuitOpen (503 circuit_open)

Messages are written for the caller: never a stack trace, never a secret.
"""

from __future__ import annotations

from typing import Any, ClassVar


class StrataError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details or {}

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        if self.details:
            error["details"] = self.details
        return {"error": error}


class BadRequest(StrataError):
    status = 400
    code = "bad_request"


class ValidationFailed(BadRequest):
    status = 422
    code = "validation_failed"


class Unauthorized(StrataError):
    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(StrataError):
    status = 403
    code = "forbidden"


class NotFound(StrataError):
    status = 404
    code = "not_found"


class Conflict(StrataError):
    status = 409
    code = "conflict"


class PayloadTooLarge(StrataError):
    status = 413
    code = "payload_too_large"


class RateLimited(StrataError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_seconds: float, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, int(self.retry_after_seconds + 0.999)))}


class ServiceUnavailable(StrataError):
    status = 503
    code = "unavailable"


class Draining(ServiceUnavailable):
    code = "draining"


class UpstreamError(StrataError):
    status = 502
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class CircuitOpen(UpstreamError):
    status = 503
    code = "circuit_open"
