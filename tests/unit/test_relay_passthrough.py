"""The relay sends an upstream chunk's own bytes when nothing changed them, and never stale bytes."""

from __future__ import annotations

import orjson
import pytest

from strata_runtime.providers.openai_compat import UpstreamChunk, drop_null_usage, rename_model

RAW = (b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"up-model",'
       b'"choices":[{"index":0,"delta":{"content":"say \\"model\\":\\"up-model\\""},"finish_reason":null}],'
       b'"usage":null}')


def chunk(raw: bytes = RAW) -> UpstreamChunk:
    parsed = UpstreamChunk(orjson.loads(raw))
    parsed.raw = raw
    return parsed


def test_renaming_the_model_edits_only_the_member_and_keeps_the_bytes_in_step() -> None:
    c = chunk()
    rename_model(c, "logical")
    assert c["model"] == "logical"
    assert c.raw is not None
    assert orjson.loads(c.raw) == c  # the bytes say what the dict says
    assert b'say \\"model\\":\\"up-model\\"' in c.raw  # content that looks like the member is untouched


def test_the_same_name_changes_nothing() -> None:
    c = chunk()
    rename_model(c, "up-model")
    assert c.raw == RAW


def test_a_null_usage_is_dropped_from_the_bytes_too() -> None:
    c = chunk()
    drop_null_usage(c)
    assert "usage" not in c
    assert c.raw is not None
    assert orjson.loads(c.raw) == c


@pytest.mark.parametrize("raw", [
    RAW.replace(b'"model":"up-model"', b'"model": "up-model"'),  # not compact: cannot be edited safely
    RAW.replace(b'"created":1', b'"created":1,"x":{"model":"up-model"}'),  # twice: which one is ours?
])
def test_bytes_that_cannot_be_edited_safely_are_dropped_and_the_dict_is_serialised(raw: bytes) -> None:
    c = chunk(raw)
    rename_model(c, "logical")
    assert c.raw is None
    assert c["model"] == "logical"
