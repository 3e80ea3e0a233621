"""The key redaction's edge cases, on parsed chunks and raw JSON (`providers/redaction.py`); the sweep over
every cut point against a raw upstream is in integration/test_upstream_raw_faults.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from strata_runtime.providers.redaction import KeyRedactor

pytestmark = pytest.mark.unit

KEY = "sk-proj-Zq8uXb3LmN4pR7tV9wY2aC5eG1iK0oQ6sUunit"


def _chunk(*choices: dict[str, Any]) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": list(choices)}


def _choice(index: int, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish}


def _joined(chunks: list[dict[str, Any]], index: int, field: str = "content") -> str:
    return "".join((c["delta"].get(field) or "") for chunk in chunks for c in chunk["choices"] if c["index"] == index)


def test_two_choices_are_carried_apart_and_each_is_released_by_its_own_finish_reason() -> None:
    carry = KeyRedactor(KEY).stream()
    chunks = [_chunk(_choice(0, content="a key: " + KEY[:10]), _choice(1, content="plain s")),
              _chunk(_choice(1, content="k and more")),  # "s" + "k..." is not the key: released as text
              _chunk(_choice(0, content=KEY[10:] + " end", ), _choice(1, "stop")),
              _chunk(_choice(0, "stop"))]
    for chunk in chunks:
        carry.chunk(chunk)
    assert carry.flush() is None
    assert _joined(chunks, 0) == "a key: [redacted] end"
    assert _joined(chunks, 1) == "plain sk and more"


def test_a_prefix_still_held_when_the_stream_ends_goes_out_in_a_last_chunk() -> None:
    carry = KeyRedactor(KEY).stream()
    chunks = [_chunk(_choice(0, content="it was sk-pro"))]
    carry.chunk(chunks[0])
    assert _joined(chunks, 0) == "it was "
    rest = carry.flush()
    assert rest is not None and rest["model"] == "m" and rest["object"] == "chat.completion.chunk"
    assert _joined([*chunks, rest], 0) == "it was sk-pro"


def test_tool_call_arguments_are_carried_per_tool_call_and_released_with_the_finish_reason() -> None:
    carry = KeyRedactor(KEY).stream()

    def call(index: int, arguments: str) -> dict[str, Any]:
        return {"index": index, "function": {"arguments": arguments}}

    chunks = [_chunk(_choice(0, tool_calls=[call(0, '{"k": "' + KEY[:5]), call(1, '{"q": "s')])),
              _chunk(_choice(0, tool_calls=[call(0, KEY[5:] + '"}')])),
              _chunk(_choice(0, "tool_calls"))]
    for chunk in chunks:
        carry.chunk(chunk)
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            for tc in c["delta"].get("tool_calls") or ():
                arguments[tc["index"]] = arguments.get(tc["index"], "") + tc["function"]["arguments"]
    assert arguments == {0: '{"k": "[redacted]"}', 1: '{"q": "s'}


def test_text_that_never_starts_the_key_passes_as_it_came() -> None:
    carry = KeyRedactor(KEY).stream()
    chunk = _chunk(_choice(0, content="nothing to hold here"))
    assert carry.chunk(chunk) is False and _joined([chunk], 0) == "nothing to hold here"


@pytest.mark.parametrize("raw", [
    b'{"a": "\\u0073k-proj-Zq8uXb3LmN4pR7tV9wY2aC5eG1iK0oQ6sUunit"}',
    b'{"a": "sk-proj-Zq8uXb3LmN4pR7tV9wY2aC5eG1iK0oQ6sUunit"}',
    b'{"sk-proj-Zq8uXb3LmN4pR7tV9wY2aC5eG1iK0oQ6sUun\\u0069t": 1}',
])
def test_the_key_is_out_of_a_json_text_whether_escaped_or_not_in_values_and_names(raw: bytes) -> None:
    text, parsed = KeyRedactor(KEY).parse(raw)
    assert KEY not in orjson.dumps(parsed).decode() and KEY.encode() not in text
    assert "[redacted]" in orjson.dumps(orjson.loads(text)).decode()


def test_a_key_starting_with_an_escape_letter_is_found_and_a_look_alike_is_left_alone() -> None:
    redactor = KeyRedactor("nabcdefgh12")
    # The escape `\n` then "abcdefgh12": the bytes "nabcdefgh12" are there, the key is not.
    text, parsed = redactor.parse(b'{"a": "x\\nabcdefgh12"}')
    assert parsed == {"a": "x\nabcdefgh12"}
    # The key itself right after a newline: redacted, and still valid JSON.
    text, parsed = redactor.parse(b'{"a": "x\\n\\u006eabcdefgh12"}')
    assert parsed == {"a": "x\n[redacted]"} and orjson.loads(text) == parsed


def test_legacy_function_call_arguments_are_carried_too() -> None:
    carry = KeyRedactor(KEY).stream()
    chunks = [_chunk(_choice(0, function_call={"name": "f", "arguments": '{"k": "' + KEY[:20]})),
              _chunk(_choice(0, function_call={"arguments": KEY[20:] + '"}'})),
              _chunk(_choice(0, "function_call"))]
    for chunk in chunks:
        carry.chunk(chunk)
    joined = "".join(c["delta"].get("function_call", {}).get("arguments", "") for chunk in chunks
                     for c in chunk["choices"])
    assert joined == '{"k": "[redacted]"}'


def _tokens(*texts: str) -> dict[str, Any]:
    return {"content": [{"token": t, "logprob": -1.0, "bytes": list(t.encode()), "top_logprobs": []} for t in texts]}


def test_logprob_tokens_spelling_the_key_in_one_event_become_one_redacted_token() -> None:
    carry = KeyRedactor(KEY).stream()
    choice = _choice(0, content="x [redacted] y")  # the content was already scrubbed as bytes
    choice["logprobs"] = _tokens("x ", *KEY, " y")
    assert carry.chunk(_chunk(choice)) is True
    [token] = choice["logprobs"]["content"]
    assert token["token"] == "x [redacted] y" and bytes(token["bytes"]).decode() == "x [redacted] y"
    assert token["logprob"] == -1.0 * (len(KEY) + 2)


def test_logprob_tokens_that_end_in_a_key_prefix_are_held_until_the_finish_reason() -> None:
    carry = KeyRedactor(KEY).stream()
    first = _choice(0, content="plain s")
    first["logprobs"] = _tokens("plain", " s")
    finish = _choice(0, "stop")
    carry.chunk(_chunk(first))
    carry.chunk(_chunk(finish))
    assert [t["token"] for t in first["logprobs"]["content"]] == ["plain "]
    assert [t["token"] for t in finish["logprobs"]["content"]] == ["s"]
    assert first["delta"]["content"] + finish["delta"]["content"] == "plain s"


def test_logprob_tokens_without_the_key_pass_untouched() -> None:
    carry = KeyRedactor(KEY).stream()
    choice = _choice(0, content="hello world")
    choice["logprobs"] = _tokens("hello", " world")
    before = orjson.dumps(choice)
    assert carry.chunk(_chunk(choice)) is False and orjson.dumps(choice) == before
