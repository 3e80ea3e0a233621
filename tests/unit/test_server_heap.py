"""The serving process freezes what start-up built and collects its young generation less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from strata_runtime.server import GC_THRESHOLDS, settle_heap

pytestmark = pytest.mark.unit


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settle_heap_freezes_start_up_objects_and_raises_the_thresholds(restored_gc: None) -> None:
    built_at_start_up = [{"i": i} for i in range(1000)]
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    settle_heap()
    assert gc.get_freeze_count() >= len(built_at_start_up)
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700


def test_cyclic_garbage_made_after_settling_is_still_collected(restored_gc: None) -> None:
    settle_heap()

    class Node:
        other: object

    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = gc.get_objects(generation=0) + gc.get_objects(generation=1) + gc.get_objects(generation=2)
    assert any(o is a for o in alive)  # tracked, not frozen
    del a, b, alive
    assert gc.collect() >= 2
