"""Structured JSON logs on stdout, with request/tenant/agent ids from a context variable.

Request ids: a client's `X-Request-ID` is kept when it is 1-128 printable ASCII characters
(no spaces or control characters); anything else (too long, non-ASCII, not UTF-8) is replaced
by a fresh `req_<32 hex>` id rather than rejected, because a tracing header should never be
the reason a request fails. The id is in every log line of the request (`request_context`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from typing import Any

import orjson

request_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "strata_request_context", default=None
)

_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")


def request_id_from(header: bytes | None) -> tuple[str, bool]:
    """The request's id and whether it is the client's own: a valid header value, else a new id."""
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header.decode("ascii"), True
    # 128 random bits as 32 hex digits (uuid4's text without building a UUID: a fifth of the cost)
    return "req_" + os.urandom(16).hex(), False


def current_request_id() -> str | None:
    context = request_context.get()
    return context.get("request_id") if context else None


_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {"message", "asctime"}
_SECRET_HINTS = ("key", "token", "secret", "password", "authorization", "dsn")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(request_context.get() or {})
        for name, value in record.__dict__.items():
            if name in _STANDARD_ATTRS or name.startswith("_"):
                continue
            entry[name] = "[redacted]" if any(h in name.lower() for h in _SECRET_HINTS) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except TypeError:  # an integer beyond 64 bits (a client's header, say): orjson has no `default` for it
            return json.dumps(entry, default=str, ensure_ascii=False)


# Loggers kept at WARNING whatever the level: uvicorn's access lines; httpx's and httpx2's one INFO line
# per request, which carries the request's whole URL (a GET tool's arguments are its query, and a tool's
# redirect can put anything in it, a secret the tool was sent included); httpcore's DEBUG traces, which
# carry every response header as the server sent it.
QUIET_LOGGERS = ("uvicorn.access", "httpx", "httpx2", "httpcore", "httpcore2")


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
