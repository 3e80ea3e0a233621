"""The agent loop's pure parts: which calls a model message asks for, call ids, the answer text."""

from __future__ import annotations

from strata_runtime.tools.loop import answer_text, call_id, decode_event, encode_event, plan_calls

NAMES = {"weather__now": "weather.now", "add": "add"}


def test_openai_tool_calls_are_mapped_back_to_tool_ids() -> None:
    message = {
        "tool_calls": [
            {"id": "c1", "function": {"name": "weather__now", "arguments": '{"city": "Oslo"}'}},
            {"id": "c2", "function": {"name": "add", "arguments": "{not json"}},
        ]
    }
    first, second = plan_calls(message, NAMES)
    assert (first.tool_id, first.arguments, first.model_call_id, first.problem) == (
        "weather.now",
        {"city": "Oslo"},
        "c1",
        None,
    )
    assert second.arguments is None and second.problem == "the arguments are not valid JSON"


def test_the_text_convention_is_read_line_by_line() -> None:
    text = 'Let me check.\nTOOL: weather.now {"city": "Rome"}\nTOOL: add {"a": 1, "b": 2}\nTOOL: add {oops'
    calls = plan_calls({"content": text}, NAMES)
    assert [(c.tool_id, c.arguments) for c in calls] == [
        ("weather.now", {"city": "Rome"}),
        ("add", {"a": 1, "b": 2}),
        ("add", None),
    ]
    assert calls[2].problem is not None
    assert plan_calls({"content": "no tools here, TOOL: is mid-line"}, NAMES) == []


def test_call_ids_are_stable_and_distinct_per_position() -> None:
    assert call_id("t", "s", 3, 0, 1) == call_id("t", "s", 3, 0, 1)
    ids = {
        call_id(t, s, seq, step, i)
        for t in ("t", "u")
        for s in ("s", "s2")
        for seq in (1, 3)
        for step in (0, 1)
        for i in (0, 1)
    }
    assert len(ids) == 32


def test_tool_events_are_not_part_of_the_answer() -> None:
    event = encode_event("tool_call", {"id": "x", "tool": "add"})
    assert decode_event(event) == {"type": "tool_call", "id": "x", "tool": "add"}
    assert decode_event("plain text") is None
    assert answer_text([event, "The sum ", "is 3."]) == "The sum is 3."
