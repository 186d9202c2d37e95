"""Each condition kind fires and clears exactly when its definition says (rules/conditions.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import TypeAdapter

from fieldhub.clock import US_PER_S
from fieldhub.rules.conditions import (
    ConditionState,
    Edge,
    Sample,
    initial,
    on_sample,
    on_tick,
)
from fieldhub.rules.model import Condition

T0 = 1_700_000_000 * US_PER_S
CONDITION: TypeAdapter[Condition] = TypeAdapter(Condition)


def cond(data: dict[str, Any]) -> Condition:
    return CONDITION.validate_python(data)


def s(seconds: float) -> int:
    return T0 + round(seconds * US_PER_S)


class Feed:
    """Feeds a condition as the engine will, collecting edges (times in seconds after T0)."""

    def __init__(self, condition: Condition, *, start: float | None = None) -> None:
        self.condition = condition
        self.state = initial(condition, start_us=None if start is None else s(start))
        self.edges: list[tuple[str, float]] = []

    def _take(self, step: tuple[ConditionState, tuple[Edge, ...]]) -> list[tuple[str, float]]:
        self.state, edges = step
        got = [(edge.kind, (edge.ts_us - T0) / US_PER_S) for edge in edges]
        self.edges.extend(got)
        return got

    def sample(self, at: float, value: float, metric: str = "temperature") -> list[Any]:
        return self._take(on_sample(self.condition, self.state, metric, Sample(s(at), value)))

    def tick(self, at: float) -> list[Any]:
        return self._take(on_tick(self.condition, self.state, s(at)))

    def samples(self, points: Sequence[tuple[float, float]], metric: str = "temperature") -> None:
        for at, value in points:
            self.sample(at, value, metric)

    def restart(self) -> None:
        """What the engine does across a restart: the state through JSON text and back."""
        self.state = ConditionState.from_json(json.loads(json.dumps(self.state.to_json())))


COLD_ROOM = {"threshold": {"metric": "temperature", "above": 8, "clear_below": 6, "for_s": 600}}


# --- threshold -------------------------------------------------------------------------------


def test_threshold_fires_after_for_s_of_reading_time_and_clears_below_the_clear_level() -> None:
    feed = Feed(cond(COLD_ROOM))
    feed.samples([(0, 5), (60, 8.5), (600, 9), (659, 9)])
    assert feed.edges == []  # beyond since 60: due at 660
    assert feed.sample(660, 9) == [("fire", 660)]
    feed.samples([(720, 7), (780, 6.5), (840, 6)])  # in the band, and exactly 6 is not below 6
    assert feed.edges == [("fire", 660)]
    assert feed.sample(900, 5.9) == [("clear", 900)]


def test_threshold_run_broken_before_for_s_does_not_fire() -> None:
    feed = Feed(cond(COLD_ROOM))
    feed.samples([(0, 9), (500, 9), (599, 7.9), (600, 9), (1100, 9)])
    assert feed.edges == []
    assert feed.tick(1200) == []  # the run restarted at 600: due 1200
    assert feed.tick(1201) == [("fire", 1200)]


def test_threshold_tick_notices_the_for_window_at_its_definitional_time() -> None:
    feed = Feed(cond(COLD_ROOM))
    feed.sample(0, 9)
    assert feed.tick(600) == []  # exactly due: a reading at 600 may still end the run
    assert feed.tick(630) == [("fire", 600)]
    assert feed.tick(700) == []


def test_a_reading_after_the_window_elapsed_fires_then_and_clears_at_its_own_time() -> None:
    feed = Feed(cond(COLD_ROOM))
    feed.sample(0, 9)
    assert feed.sample(900, 4) == [("fire", 600), ("clear", 900)]


def test_threshold_exactly_for_s_counts_only_if_still_beyond() -> None:
    feed = Feed(cond(COLD_ROOM))
    feed.samples([(0, 9), (600, 7)])
    assert feed.edges == []
    feed = Feed(cond(COLD_ROOM))
    feed.samples([(0, 9), (600, 8.1)])
    assert feed.edges == [("fire", 600)]


def test_threshold_below_with_clear_above() -> None:
    feed = Feed(cond({"threshold": {"metric": "temperature", "below": 2, "clear_above": 3}}))
    feed.samples([(0, 2), (10, 1.9), (20, 2.5), (30, 3), (40, 3.1)])
    assert feed.edges == [("fire", 10), ("clear", 40)]


def test_noisy_sensor_inside_the_hysteresis_band_fires_once() -> None:
    feed = Feed(cond({"threshold": {"metric": "temperature", "above": 8, "clear_below": 6}}))
    # Oscillating +-1.5 around 8 every 30 s for two hours, never below 6.
    for i in range(240):
        feed.sample(i * 30, 8 + (1.5 if i % 2 else -1.5))
    assert [kind for kind, _ in feed.edges] == ["fire"]
    # Without hysteresis the same signal chatters: one fire per excursion.
    chatty = Feed(cond({"threshold": {"metric": "temperature", "above": 8}}))
    for i in range(240):
        chatty.sample(i * 30, 8 + (1.5 if i % 2 else -1.5))
    assert sum(kind == "fire" for kind, _ in chatty.edges) == 120


def test_restart_mid_for_window_neither_resets_nor_double_fires() -> None:
    feed = Feed(cond(COLD_ROOM))
    feed.samples([(0, 9), (300, 9)])
    feed.restart()
    feed.tick(400)
    feed.restart()
    assert feed.tick(601) == [("fire", 600)]  # counted from 0, not from the restart
    feed.restart()
    assert feed.tick(700) == []
    feed.sample(760, 9)
    assert feed.edges == [("fire", 600)]


def test_other_metrics_leave_a_threshold_alone() -> None:
    feed = Feed(cond(COLD_ROOM))
    before = feed.state
    assert feed.sample(0, 100, metric="humidity") == []
    assert feed.state == before


# --- no_data ---------------------------------------------------------------------------------


def test_no_data_fires_from_ticks_alone_with_no_traffic_at_all() -> None:
    feed = Feed(cond({"no_data": {"for_s": 300}}), start=0)
    assert feed.tick(300) == []  # not older than 300 s yet
    assert feed.tick(310) == [("fire", 300)]
    assert feed.tick(900) == []
    assert feed.sample(1000, 1, metric="rssi_percent") == [("clear", 1000)]


def test_no_data_without_a_start_counts_from_the_first_tick() -> None:
    feed = Feed(cond({"no_data": {"for_s": 60}}))
    feed.tick(0)
    assert feed.tick(61) == [("fire", 60)]


def test_no_data_counts_silence_from_the_last_reading_of_its_metric() -> None:
    feed = Feed(cond({"no_data": {"for_s": 300, "metric": "rssi_percent"}}), start=0)
    feed.sample(100, 60, metric="rssi_percent")
    feed.sample(350, 21.0)  # temperature does not count
    assert feed.tick(400) == []
    assert feed.tick(401) == [("fire", 400)]


def test_a_gap_no_tick_saw_is_still_an_alarm_at_its_own_times() -> None:
    feed = Feed(cond({"no_data": {"for_s": 300}}), start=0)
    feed.sample(0, 1)
    assert feed.sample(500, 1) == [("fire", 300), ("clear", 500)]


def test_buffered_readings_clear_a_no_data_alarm_no_earlier_than_it_fired() -> None:
    feed = Feed(cond({"no_data": {"for_s": 300}}), start=0)
    feed.sample(0, 1)
    assert feed.tick(600) == [("fire", 300)]
    # The firmware's offline buffer: readings from during the "silence" arrive late.
    assert feed.sample(30, 1) == [("clear", 300)]
    feed.samples([(60, 1), (90, 1)])
    assert feed.edges == [("fire", 300), ("clear", 300)]


# --- rate ------------------------------------------------------------------------------------


def test_rate_over_the_window_from_oldest_to_newest() -> None:
    feed = Feed(cond({"rate": {"metric": "temperature", "window_s": 60, "above": 0.01}}))
    feed.samples([(0, 20), (30, 20.25), (60, 20.5)])  # 0.5 / 60 s: not above
    assert feed.edges == []
    assert feed.sample(90, 21.25) == [("fire", 90)]  # window [30, 90]: 1.0 / 60
    assert feed.sample(150, 21.5) == [("clear", 150)]  # window [90, 150]: 0.25 / 60


def test_rate_below_and_a_single_reading_window_changes_nothing() -> None:
    feed = Feed(cond({"rate": {"metric": "temperature", "window_s": 10, "below": -0.1}}))
    feed.samples([(0, 20), (10, 18)])
    assert feed.edges == [("fire", 10)]
    feed.sample(100, 18)  # alone in its window: no rate, state kept
    assert feed.edges == [("fire", 10)]
    feed.sample(105, 18)
    assert feed.edges == [("fire", 10), ("clear", 105)]


# --- zscore ----------------------------------------------------------------------------------


def test_zscore_against_the_previous_n_readings() -> None:
    feed = Feed(cond({"zscore": {"metric": "temperature", "n": 4, "threshold": 1.5}}))
    feed.samples([(0, 20), (1, 22), (2, 20), (3, 22)])  # mean 21, std 1
    assert feed.edges == []
    assert feed.sample(4, 22.4) == []  # z = 1.4
    # baseline now 22, 20, 22, 22.4: mean 21.6, std ~0.938
    assert feed.sample(5, 23.0) == []  # z ~1.49
    # baseline 20, 22, 22.4, 23: mean 21.85, std ~1.14
    assert feed.sample(6, 23.6) == [("fire", 6)]  # z ~1.53
    assert feed.sample(7, 22.0) == [("clear", 7)]


def test_zscore_with_a_flat_baseline_is_zero_not_a_division_by_zero() -> None:
    feed = Feed(cond({"zscore": {"metric": "temperature", "n": 3, "threshold": 1.5}}))
    feed.samples([(0, 20), (1, 20), (2, 20), (3, 35)])
    assert feed.edges == []
    floor = Feed(
        cond({"zscore": {"metric": "temperature", "n": 3, "threshold": 1, "min_std": 0.5}})
    )
    floor.samples([(0, 20), (1, 20.1), (2, 20), (3, 35)])  # std 0.047 <= 0.5: z = 0
    assert floor.edges == []


def test_zscore_baseline_survives_a_restart() -> None:
    feed = Feed(cond({"zscore": {"metric": "temperature", "n": 4, "threshold": 1.5}}))
    feed.samples([(0, 20), (1, 22), (2, 20)])
    feed.restart()
    feed.sample(3, 22)
    feed.restart()
    assert feed.sample(4, 24) == [("fire", 4)]  # z = 3 against 20, 22, 20, 22


# --- schedule --------------------------------------------------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")


def local(*parts: int) -> float:
    """Seconds after T0 of a Berlin wall-clock time."""
    return datetime(*parts, tzinfo=BERLIN).timestamp() - T0 / US_PER_S  # type: ignore[misc]


def test_schedule_across_midnight() -> None:
    condition = cond({"schedule": {"tz": "Europe/Berlin", "on_hour": 22, "off_hour": 6}})
    feed = Feed(condition, start=local(2024, 6, 10, 12))
    for step in range(48):
        feed.tick(local(2024, 6, 10, 12) + step * 1800)
    assert feed.edges == [
        ("fire", local(2024, 6, 10, 22)),
        ("clear", local(2024, 6, 11, 6)),
    ]


def test_schedule_open_at_start_fires_at_start_and_a_long_gap_gives_every_edge() -> None:
    condition = cond({"schedule": {"tz": "UTC", "on_hour": 8, "off_hour": 20}})
    start = datetime(2024, 6, 10, 9, tzinfo=ZoneInfo("UTC")).timestamp() - T0 / US_PER_S
    feed = Feed(condition, start=start)
    got = feed.tick(start + 2 * 86_400)  # two days in one tick
    hours = [(kind, round((at - start) / 3600)) for kind, at in got]
    assert hours == [("fire", 0), ("clear", 11), ("fire", 23), ("clear", 35), ("fire", 47)]


def test_schedule_over_dst_changes_in_a_named_zone() -> None:
    # Spring forward: 2024-03-31 02:00 CET does not exist; a 2 o'clock window opens at the jump.
    condition = cond({"schedule": {"tz": "Europe/Berlin", "on_hour": 2, "off_hour": 4}})
    feed = Feed(condition, start=local(2024, 3, 30, 12))
    feed.tick(local(2024, 3, 31, 12))
    jump = datetime(2024, 3, 31, 1, tzinfo=ZoneInfo("UTC")).timestamp() - T0 / US_PER_S
    assert feed.edges == [("fire", jump), ("clear", local(2024, 3, 31, 4))]
    assert feed.edges[1][1] - feed.edges[0][1] == 3600  # 03:00 CEST to 04:00 CEST
    # Fall back: 02:00-03:00 happens twice on 2024-10-27; the window is 3 real hours long.
    feed = Feed(condition, start=local(2024, 10, 26, 12))
    feed.tick(local(2024, 10, 27, 12))
    (_, on), (_, off) = feed.edges
    assert off - on == 3 * 3600


def test_schedule_days_name_the_day_a_window_opens() -> None:
    # 2024-06-14 is a Friday: its 22:00 window runs into Saturday 06:00; Saturday's does not run.
    condition = cond(
        {"schedule": {"tz": "Europe/Berlin", "on_hour": 22, "off_hour": 6, "days": ["fri"]}}
    )
    feed = Feed(condition, start=local(2024, 6, 13, 12))
    feed.tick(local(2024, 6, 17, 12))
    assert feed.edges == [("fire", local(2024, 6, 14, 22)), ("clear", local(2024, 6, 15, 6))]


# --- all / any -------------------------------------------------------------------------------


def test_all_alarms_only_in_active_hours() -> None:
    condition = cond(
        {
            "all": [
                {"schedule": {"tz": "UTC", "on_hour": 8, "off_hour": 18}},
                {"threshold": {"metric": "temperature", "above": 30}},
            ]
        }
    )
    day = datetime(2024, 6, 10, tzinfo=ZoneInfo("UTC")).timestamp() - T0 / US_PER_S
    feed = Feed(condition, start=day)
    feed.sample(day + 7 * 3600, 35)  # hot before hours: not yet
    assert feed.edges == []
    feed.tick(day + 9 * 3600)
    assert feed.edges == [("fire", day + 8 * 3600)]  # the window opened on a hot room
    feed.sample(day + 12 * 3600, 20)
    assert feed.edges[-1] == ("clear", day + 12 * 3600)
    feed.sample(day + 17 * 3600, 35)
    feed.sample(day + 19 * 3600, 35)  # the schedule closed at 18 before this reading
    assert feed.edges[-2:] == [("fire", day + 17 * 3600), ("clear", day + 18 * 3600)]


def test_any_fires_on_the_first_child_and_clears_when_none_is_left() -> None:
    condition = cond(
        {
            "any": [
                {"threshold": {"metric": "temperature", "above": 30}},
                {"threshold": {"metric": "humidity", "above": 80}},
            ]
        }
    )
    feed = Feed(condition)
    feed.sample(0, 31)
    feed.sample(1, 85, metric="humidity")
    feed.sample(2, 20)
    assert feed.edges == [("fire", 0)]
    feed.sample(3, 50, metric="humidity")
    assert feed.edges == [("fire", 0), ("clear", 3)]


def test_a_composite_state_round_trips_through_json() -> None:
    condition = cond(
        {
            "all": [
                {"no_data": {"for_s": 60}},
                {"any": [{"zscore": {"metric": "temperature", "n": 2, "threshold": 1}}]},
            ]
        }
    )
    feed = Feed(condition, start=0)
    feed.samples([(0, 1), (1, 2), (2, 3)])
    before = feed.state
    feed.restart()
    assert feed.state == before


# --- late readings ---------------------------------------------------------------------------


def test_a_reading_older_than_the_newest_changes_nothing() -> None:
    feed = Feed(cond({"threshold": {"metric": "temperature", "above": 8}}))
    feed.samples([(0, 5), (100, 5)])
    before = feed.state
    assert feed.sample(50, 20) == []
    assert feed.state == before


def test_a_tick_decided_threshold_is_cleared_by_buffered_readings_not_undone() -> None:
    feed = Feed(cond(COLD_ROOM))
    feed.sample(0, 9)
    assert feed.tick(900) == [("fire", 600)]  # the last value held past for_s
    # The buffer shows it was back at 5 °C at 300 s: the alarm clears, no earlier than it fired.
    assert feed.sample(300, 5) == [("clear", 600)]
