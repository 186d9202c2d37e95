"""The serving processes' interpreter settings (fieldhub/interpreter.py)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from fieldhub import interpreter


@pytest.fixture
def restore_interpreter() -> Iterator[None]:
    """The test process keeps CPython's own schedule and an unfrozen heap afterwards."""
    threshold, switch = gc.get_threshold(), sys.getswitchinterval()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    sys.setswitchinterval(switch)


@pytest.mark.usefixtures("restore_interpreter")
def test_tuning_sets_the_switch_interval_and_a_rare_young_collection() -> None:
    interpreter.tune_for_service()
    assert sys.getswitchinterval() == pytest.approx(interpreter.GIL_SWITCH_INTERVAL_S)
    assert gc.get_threshold()[0] == interpreter.YOUNG_THRESHOLD


@pytest.mark.usefixtures("restore_interpreter")
def test_a_batch_alive_across_allocations_is_not_promoted_to_the_oldest_generation() -> None:
    """What the tuning is for: a batch's objects, alive while thousands more are allocated
    (the next messages), die young instead of filling the oldest generation."""
    interpreter.tune_for_service()
    interpreter.freeze_startup_heap()
    gc.collect()
    old_before = len(gc.get_objects(generation=2))
    # Lists, not dicts of numbers: CPython does not track those, a collection never sees them.
    batch = [[i] for i in range(5_000)]
    arriving = [[i] for i in range(20_000)]  # the next messages, alive meanwhile
    promoted = len(gc.get_objects(generation=2)) - old_before
    del batch, arriving
    # With CPython's default schedule all 5,000 are in the oldest generation by now.
    assert promoted < 500
    assert gc.get_freeze_count() > 0
