"""The line budget of a stdio MCP server's stderr relay: bursts pass, a flood is counted, not logged."""

from __future__ import annotations

from strata_runtime.tools.mcp_link import LineBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_and_the_rest_is_counted_until_the_budget_refills() -> None:
    clock = Clock()
    budget = LineBudget(rate=10.0, burst=5, clock=clock)
    assert [budget.take() for _ in range(8)] == [True] * 5 + [False] * 3
    assert budget.take_dropped() == 3 and budget.take_dropped() == 0
    clock.now += 0.25  # 2.5 lines' worth
    assert [budget.take() for _ in range(3)] == [True, True, False]
    clock.now += 60  # a long quiet spell refills to the burst, not beyond
    assert sum(budget.take() for _ in range(10)) == 5
