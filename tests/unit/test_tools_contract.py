"""The executor contract's values: outcomes round-trip, deadlines cut timeouts, names fit OpenAI."""

from __future__ import annotations

import re
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
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name), name


def test_function_names_stay_valid_and_distinct_for_any_ids() -> None:
    ids = ["a.b", "a__b", "a._b", "a_.b", "a___b", "天气.查询", "天气.预报", "srv.get/x", "srv.get_x",
           "x" * 70 + ".one", "x" * 70 + ".two", "a..b", ".a", "a.", "plain", "with-dash.ok"]
    names = [openai_name(i) for i in ids]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", n) for n in names), names
    assert len(set(names)) == len(ids), names
    assert openai_name("with-dash.ok") == "with-dash__ok" and openai_name("plain") == "plain"
