"""The executor contract's values: outcomes round-trip, deadlines cut timeouts, names fit OpenAI."""

from __future__ import annotations

import time

from strata_runtime.tools.contract import CallContext, ErrorCode, ToolOutcome, ToolSpec, openai_name


def test_an_outcome_survives_a_round_trip_through_json_shapes() -> None:
    failed = ToolOutcome.failure(ErrorCode.TIMEOUT, "no answer in 2s")
    assert ToolOutcome.from_dict(failed.as_dict()) == failed
    done = ToolOutcome.success({"temp": 21})
    assert ToolOutcome.from_dict(done.as_dict()) == done


def test_the_call_deadline_cuts_the_tools_own_timeout() -> None:
    ctx = CallContext(call_id="c", tenant="t", agent_id="a", deadline=time.monotonic() + 1.0)
    assert ctx.remaining(30.0) <= 1.0
    assert CallContext(call_id="c", tenant="t", agent_id="a").remaining(30.0) == 30.0
    past = CallContext(call_id="c", tenant="t", agent_id="a", deadline=time.monotonic() - 5)
    assert past.remaining(30.0) == 0.0


def test_namespaced_ids_become_valid_openai_function_names() -> None:
    assert openai_name("weather.lookup") == "weather__lookup"
    spec = ToolSpec(
        id="srv.get/x", name="x", description="d", input_schema={"type": "object"}, executor="mcp", target="srv/x"
    )
    name = spec.openai_tool()["function"]["name"]
    assert all(c.isalnum() or c in "_-" for c in name)
