"""The one rule for every id a caller names: tenant, agent, channel and session ids.

Letters, digits and `_ . : @ -`, starting with a letter or digit, at most 128 characters:
safe inside Redis keys and hash tags, SQL values and log lines, and wide enough for UUIDs,
e-mail-like and `namespace:name` ids.
"""

from __future__ import annotations

import re
from typing import Any

from strata_runtime.errors import BadRequest

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
ID_RE = re.compile(ID_PATTERN)
ID_RULE = "letters, digits and _.:@- (starting with a letter or digit), at most 128 characters"


def checked_id(value: Any, field: str) -> str | None:
    """`value` when it is a valid id, None when absent; a 400 naming `field` otherwise."""
    if value is None:
        return None
    if not isinstance(value, str) or not ID_RE.match(value):
        raise BadRequest(f"{field} must be an id: {ID_RULE}", field=field)
    return value


def required_id(value: Any, field: str) -> str:
    checked = checked_id(value, field)
    if checked is None:
        raise BadRequest(f"{field} is required", field=field)
    return checked
