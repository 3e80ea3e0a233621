"""The operator's logs: one JSON object per line on stdout, in the runtime's format.

Fields: ``ts`` (seconds), ``level``, ``logger``, ``msg``, ``exc`` (a traceback, if any), the
object a kopf log line is about (``object``: kind, namespace, name), and any ``extra`` fields,
redacted when their name hints at a credential. Same format as the runtime's logs, so one log
pipeline parses both; written here, not imported, because the operator must not import the
runtime's serving code.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {"message", "asctime"}
_KOPF_ATTRS = frozenset({"k8s_skip", "k8s_ref", "settings"})
"""What kopf's per-object loggers attach to a record: the object is kept (as ``object``), the rest dropped."""
_SECRET_HINTS = ("key", "token", "secret", "password", "authorization", "dsn")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            entry["object"] = {k: ref.get(k) for k in ("kind", "namespace", "name") if ref.get(k)}
        for name, value in record.__dict__.items():
            if name in _STANDARD_ATTRS or name in _KOPF_ATTRS or name.startswith("_"):
                continue
            entry[name] = "[redacted]" if any(h in name.lower() for h in _SECRET_HINTS) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stdout for every logger. kopf's per-object success lines (thousands per minute
    at scale) and aiohttp's access lines are kept to warnings unless the level is DEBUG."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet = ("httpx", "aiohttp.access") + (() if level.upper() == "DEBUG" else ("kopf.objects",))
    for noisy in quiet:
        logging.getLogger(noisy).setLevel(logging.WARNING)
