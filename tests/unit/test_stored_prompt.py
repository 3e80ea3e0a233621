"""The prompt stored with a turn carries a nested turn's depth and chain, and gives them back."""

from __future__ import annotations

import orjson
import pytest

from strata_runtime.agents.conversation import CALL_CHAIN_KEY, loaded_prompt, stored_prompt

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_a_top_level_turn_stores_the_body_unchanged() -> None:
    assert orjson.loads(stored_prompt(BODY, 0, None)) == BODY
    assert loaded_prompt(stored_prompt(BODY, 0, None)) == (BODY, 0, None)


def test_a_nested_turn_gets_its_depth_and_chain_back_and_the_model_never_sees_them() -> None:
    body, depth, chain = loaded_prompt(stored_prompt(BODY, 3, "chain-1"))
    assert (body, depth, chain) == (BODY, 3, "chain-1")
    assert CALL_CHAIN_KEY not in body


@pytest.mark.parametrize("recorded", [None, "x", {"depth": -2, "chain": 5}, {"depth": "3"}])
def test_a_malformed_record_is_depth_0_of_a_new_chain(recorded: object) -> None:
    raw = orjson.dumps({**BODY, CALL_CHAIN_KEY: recorded})
    assert loaded_prompt(raw) == (BODY, 0, None)
