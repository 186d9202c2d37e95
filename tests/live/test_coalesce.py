"""Per-series coalescing with an explicit clock: at most one update per series per window."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from fieldhub.live.coalesce import PRUNE_AFTER_WINDOWS, SeriesCoalescer, Update

WINDOW = 250_000  # us, the default min_interval_ms of a subscription
T = 1_700_000_000_000_000  # wall clock (epoch us) of the first offer


def test_first_reading_of_a_series_is_sent_at_once() -> None:
    c = SeriesCoalescer(WINDOW)
    assert c.offer("a", "temp", T, 21.0, now_us=T) is True
    assert c.held == 0
    assert c.due(T) == []


def test_a_second_reading_within_the_window_is_held_until_the_window_ends() -> None:
    c = SeriesCoalescer(WINDOW)
    assert c.offer("a", "temp", T, 21.0, now_us=T)
    assert c.offer("a", "temp", T + 10, 21.5, now_us=T + 10) is False
    assert c.held == 1
    assert c.due(T + WINDOW - 1) == []
    assert c.held == 1
    assert c.due(T + WINDOW) == [["a", "temp", T + 10, 21.5]]
    assert c.held == 0
    assert c.due(T + 3 * WINDOW) == []  # released once only


def test_newest_by_device_time_wins_among_held_readings() -> None:
    """Arrival order does not matter: the held reading with the largest ts is the one sent."""
    c = SeriesCoalescer(WINDOW)
    c.offer("a", "temp", T, 1.0, now_us=T)
    for ts_offset, value, now in ((50, 2.0, 1), (90, 3.0, 2), (70, 4.0, 3), (20, 5.0, 4)):
        assert c.offer("a", "temp", T + ts_offset, value, now_us=T + now) is False
    assert c.due(T + WINDOW) == [["a", "temp", T + 90, 3.0]]


def test_equal_device_times_keep_the_later_arrival() -> None:
    c = SeriesCoalescer(WINDOW)
    c.offer("a", "temp", T, 1.0, now_us=T)
    c.offer("a", "temp", T + 5, 2.0, now_us=T + 1)
    c.offer("a", "temp", T + 5, 3.0, now_us=T + 2)
    assert c.due(T + WINDOW) == [["a", "temp", T + 5, 3.0]]


def test_a_released_update_starts_a_new_window() -> None:
    """A held update sent by due() counts as sent then: the next reading waits a full window."""
    c = SeriesCoalescer(WINDOW)
    c.offer("a", "temp", T, 1.0, now_us=T)
    c.offer("a", "temp", T + 1, 2.0, now_us=T + 1)
    released_at = T + WINDOW + 40_000  # the tick came a little late
    assert c.due(released_at) == [["a", "temp", T + 1, 2.0]]
    assert c.offer("a", "temp", T + 2, 3.0, now_us=released_at + 1) is False
    assert c.due(released_at + WINDOW - 1) == []
    assert c.due(released_at + WINDOW) == [["a", "temp", T + 2, 3.0]]


def test_a_reading_after_the_window_with_nothing_held_is_sent_at_once() -> None:
    c = SeriesCoalescer(WINDOW)
    c.offer("a", "temp", T, 1.0, now_us=T)
    assert c.offer("a", "temp", T + WINDOW, 2.0, now_us=T + WINDOW) is True


def test_a_held_series_stays_held_until_due_even_after_its_window() -> None:
    """Past the window but before the tick: the newer reading joins the held one (one update)."""
    c = SeriesCoalescer(WINDOW)
    c.offer("a", "temp", T, 1.0, now_us=T)
    c.offer("a", "temp", T + 1, 2.0, now_us=T + 1)
    assert c.offer("a", "temp", T + 2, 3.0, now_us=T + WINDOW + 5) is False
    assert c.due(T + WINDOW + 6) == [["a", "temp", T + 2, 3.0]]


def test_a_series_slower_than_the_window_is_never_held() -> None:
    """One reading a second with a 250 ms window: each goes out at once, nothing waits."""
    c = SeriesCoalescer(WINDOW)
    for n in range(20):
        now = T + n * 1_000_000
        assert c.offer("slow", "temp", now, float(n), now_us=now) is True
        assert c.held == 0
        assert c.due(now + 1) == []


def test_series_are_independent() -> None:
    """Another metric of the same device and the same metric of another device are not held."""
    c = SeriesCoalescer(WINDOW)
    assert c.offer("a", "temp", T, 1.0, now_us=T)
    assert c.offer("a", "hum", T, 50.0, now_us=T + 1)
    assert c.offer("b", "temp", T, 2.0, now_us=T + 2)
    assert c.offer("a", "temp", T + 3, 1.5, now_us=T + 3) is False
    assert c.held == 1
    assert c.due(T + WINDOW) == [["a", "temp", T + 3, 1.5]]


def test_pruning_forgets_idle_series_and_keeps_held_and_recent_ones() -> None:
    """A prune (every PRUNE_AFTER_WINDOWS windows, from due()) drops series idle that long;
    a held series keeps its update and its window, a recently sent one its window."""
    c = SeriesCoalescer(WINDOW)
    old = T - (PRUNE_AFTER_WINDOWS + 2) * WINDOW
    for n in range(50):
        c.offer(f"idle-{n}", "temp", old, 0.0, now_us=old)
    c.offer("held", "temp", T, 1.0, now_us=T)
    c.offer("held", "temp", T + 1, 2.0, now_us=T + 1)
    c.offer("recent", "temp", T, 3.0, now_us=T)
    assert c.due(T + 2) == []  # the first due() prunes
    assert set(c._last_sent) == {("held", "temp"), ("recent", "temp")}
    assert c.held == 1
    # The held series kept its window and its update ...
    assert c.due(T + WINDOW - 1) == []
    assert c.due(T + WINDOW) == [["held", "temp", T + 1, 2.0]]
    # ... the recent one its window ...
    assert c.offer("recent", "temp", T + 4, 3.5, now_us=T + 4) is False
    # ... and a pruned series starts afresh: sent at once.
    assert c.offer("idle-0", "temp", T + 5, 1.0, now_us=T + 5) is True


def test_pruning_runs_again_only_after_the_prune_period() -> None:
    c = SeriesCoalescer(WINDOW)
    c.due(T)  # first prune
    c.offer("x", "temp", T, 1.0, now_us=T)
    later = T + PRUNE_AFTER_WINDOWS * WINDOW + 1  # x is now older than the horizon
    assert c.due(later - 2) == []  # not yet a prune period since the last prune
    assert ("x", "temp") in c._last_sent
    assert c.due(later) == []
    assert ("x", "temp") not in c._last_sent


# -- property ------------------------------------------------------------------------------------

SERIES = [("a", "temp"), ("a", "hum"), ("b", "temp")]


@dataclass(frozen=True)
class Op:
    series: int
    ts: int
    advance_pct: int  # how far the clock moves before this offer, in % of the window
    tick_first: bool  # whether due() runs (as the hub's tick does) before this offer


ops_strategy = st.lists(
    st.builds(
        Op,
        series=st.integers(0, len(SERIES) - 1),
        ts=st.integers(0, 20),  # small: many ties and out-of-order arrivals
        advance_pct=st.one_of(st.just(0), st.integers(0, 30), st.integers(0, 1200)),
        tick_first=st.booleans(),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(ops=ops_strategy, window=st.integers(1, 2_000_000))
def test_property_newest_is_always_emitted_and_at_most_one_update_per_window(
    ops: list[Op], window: int
) -> None:
    """For any offers with a clock that never goes back (and ticks at arbitrary times):

    * every series' newest reading (largest ts, latest arrival among equal ts) is emitted once
      a final due() runs a window after the last offer;
    * no series gets two emissions less than a window apart;
    * each emission is a reading that was offered, emitted once;
    * a reading is only ever held when its series was sent within the window or has one held.
    """
    c = SeriesCoalescer(window)
    now = T
    offered: dict[int, tuple[str, str, int, float]] = {}  # index -> reading (value = index)
    emissions: list[tuple[int, Update]] = []  # (time, update)
    last_emitted: dict[tuple[str, str], int] = {}
    pending: set[tuple[str, str]] = set()

    def record_due(at: int) -> None:
        for update in c.due(at):
            key = (str(update[0]), str(update[1]))
            emissions.append((at, update))
            last_emitted[key] = at
            pending.discard(key)

    for index, op in enumerate(ops):
        now += window * op.advance_pct // 100
        if op.tick_first:
            record_due(now)
        device, metric = SERIES[op.series]
        key = (device, metric)
        offered[index] = (device, metric, op.ts, float(index))
        if c.offer(device, metric, op.ts, float(index), now_us=now):
            emissions.append((now, [device, metric, op.ts, float(index)]))
            last_emitted[key] = now
        else:
            recently = key in last_emitted and now - last_emitted[key] < window
            assert recently or key in pending, f"{key} held needlessly at {now}"
            pending.add(key)

    record_due(now + window)
    assert c.held == 0

    emitted_indexes = [int(update[3]) for _, update in emissions]
    assert len(emitted_indexes) == len(set(emitted_indexes)), "a reading was emitted twice"
    for _, update in emissions:
        assert tuple(update) == offered[int(update[3])]

    for key in {(d, m) for d, m, _, _ in offered.values()}:
        mine = [(i, r) for i, r in offered.items() if (r[0], r[1]) == key]
        newest_index = max(mine, key=lambda item: (item[1][2], item[0]))[0]
        assert newest_index in emitted_indexes, f"newest reading of {key} never emitted"
        times = sorted(at for at, update in emissions if (update[0], update[1]) == key)
        for earlier, later in itertools.pairwise(times):
            assert later - earlier >= window, f"{key} updated twice within {window} us"
