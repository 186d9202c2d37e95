"""Evaluating a rule's condition for one device: pure functions of (condition, state, input).

No clock reads and no I/O: time comes in with each reading (`on_sample`, the reading's time) and
with each timer tick (`on_tick`, the engine's clock). The live engine and `preview` call these
same functions, so what a preview shows is what live evaluation does with the same readings.

State is a frozen `ConditionState` that `to_json`/`from_json` turn into plain JSON data and back,
exactly (floats round-trip through JSON), so the engine persists it and a restart resumes a
pending `for` window where it was: neither reset nor fired twice.

Time: reading time, not arrival time
------------------------------------
Every duration (`for_s`, `window_s`, no-data's `for_s`) is measured in reading time, and an edge
(`fire`/`clear`) carries the time its definition names, not the time it was noticed:

- threshold fires at `start of the run beyond the trigger + for_s`, where a reading's value holds
  until the next reading of the metric; it clears at the first reading past the clear level.
- no_data fires at `last reading + for_s` and clears at the next reading.
- schedule fires and clears at the window's local on/off instants.

A tick only *notices* an edge that time alone makes true (the run is still unbroken, the silence
goes on, the window opened); a reading that arrives before any tick notices it gives the same
edge, at the same time. That is why one call can return two edges (a reading after a long silence
is both the end of the for-window that elapsed without it and the clear at its own time), and why
live evaluation with ticks at any times equals a preview with ticks every `tick_s` (the tests hold
it as a property). A run that meets for_s exactly at a reading counts only if that reading is
still beyond the level: a zero-length alarm is never produced.

Late and backfilled readings
----------------------------
Each series arrives in reading-time order (the engine guarantees it), but not necessarily before
the engine's ticks: fieldhub firmware's offline buffer delivers minutes of readings at once after
a reconnect, all older than the ticks that ran meanwhile. Those readings are evaluated at their
own time: their edges carry their reading times, for-windows are measured between them. What a
tick already decided stays decided:

- A tick that fired no_data (the device went silent) or a threshold (the last value held past
  for_s) is not taken back when buffered readings then show data, or a value back below the
  level, before that time: the alarm was raised (and notified) and the buffered reading clears
  it. An edge is never stamped before the condition's previous edge, so such a clear is stamped
  at the fire time at the earliest (a zero-length span in the history) and spans never run
  backwards. A preview over the stored data, which sees the buffered readings in place, shows no
  alarm there: this is the one place where live and preview can differ, and only by alarms that
  were true on what was known at the time.
- An alarm already cleared stays cleared in its history: a buffered reading cannot un-clear or
  re-time it. It can fire a new alarm whose time is in the past (a buffered spike over the
  level with for_s = 0 fires at the spike's time, and the next reading past the clear level
  clears it).
- A reading older than the newest reading the condition has taken of its metric (out of order
  within the series: a second replay of a buffer, a duplicate) changes nothing: the newer
  readings have already decided the present, and threshold runs, rate windows and z-score
  baselines are sequences that a reading from their past cannot be inserted into.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from fieldhub.clock import US_PER_S
from fieldhub.protocol.ids import canonical_device_id
from fieldhub.rules.model import (
    WEEKDAYS,
    AllOf,
    AnyOf,
    Condition,
    NoData,
    NoDataParams,
    Rate,
    RateParams,
    Rule,
    Schedule,
    ScheduleParams,
    Threshold,
    ThresholdParams,
    ZScore,
    ZScoreParams,
    apply_overrides,
    condition_kind,
)

# A rate window keeps its readings in the state; past this many the oldest go first (the rate is
# then over a shorter span than window_s, which only a device reporting every few ms reaches).
MAX_RATE_READINGS = 10_000

EdgeKind = Literal["fire", "clear"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the condition's metric."""

    ts_us: int
    value: float


@dataclass(frozen=True, slots=True)
class Edge:
    """The condition became true (`fire`) or false (`clear`) at `ts_us`."""

    kind: EdgeKind
    ts_us: int


@dataclass(frozen=True, slots=True)
class ConditionState:
    """One condition's state for one device. One shape for every kind (unused fields stay at
    their defaults), so persisting it needs no per-kind code.

    `changed_us` is the time of the last edge (no edge is stamped before it); `last_us` the
    newest reading taken; `seen_us` the newest time evaluated at (reading or tick). `pending_us`
    is, for threshold, the start of the current run beyond the trigger; for no_data and
    schedule, when watching started (before any reading / evaluation). `values` holds a rate
    window's or a z-score baseline's readings; `children` the states of `all`/`any`.
    """

    kind: str
    active: bool = False
    changed_us: int | None = None
    last_us: int | None = None
    seen_us: int | None = None
    pending_us: int | None = None
    values: tuple[tuple[int, float], ...] = ()
    children: tuple[ConditionState, ...] = ()

    def decisive(self) -> tuple[object, ...]:
        """What a crash must not lose: which side it is on, its last edge and a pending `for`'s
        start (the rest, the newest reading's time and a baseline's readings, is progress the
        engine stores within a few seconds; docs/rules.md)."""
        return (
            self.active,
            self.changed_us,
            self.pending_us,
            tuple(child.decisive() for child in self.children),
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (dicts, lists, ints, floats, bools, None)."""
        return {
            "kind": self.kind,
            "active": self.active,
            "changed_us": self.changed_us,
            "last_us": self.last_us,
            "seen_us": self.seen_us,
            "pending_us": self.pending_us,
            "values": [[ts, value] for ts, value in self.values],
            "children": [child.to_json() for child in self.children],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConditionState:
        """The state `to_json` wrote."""
        return cls(
            kind=str(data["kind"]),
            active=bool(data["active"]),
            changed_us=_opt_int(data["changed_us"]),
            last_us=_opt_int(data["last_us"]),
            seen_us=_opt_int(data["seen_us"]),
            pending_us=_opt_int(data["pending_us"]),
            values=tuple((int(ts), float(value)) for ts, value in data["values"]),
            children=tuple(cls.from_json(child) for child in data["children"]),
        )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


Step = tuple[ConditionState, tuple[Edge, ...]]


def seconds_us(seconds: float) -> int:
    """A duration of the document in microseconds."""
    return round(seconds * US_PER_S)


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------


def initial(condition: Condition, *, start_us: int | None = None) -> ConditionState:
    """The state before anything was seen. `start_us` is when watching starts (the rule enabled,
    a preview's first instant): no_data counts silence from it for a device that never reported,
    and a schedule whose window is open then fires then. Without it, the first evaluation is the
    start."""
    kind = condition_kind(condition)
    if isinstance(condition, AllOf):
        return ConditionState(
            kind, children=tuple(initial(c, start_us=start_us) for c in condition.all)
        )
    if isinstance(condition, AnyOf):
        return ConditionState(
            kind, children=tuple(initial(c, start_us=start_us) for c in condition.any)
        )
    if isinstance(condition, NoData | Schedule):
        return ConditionState(kind, pending_us=start_us)
    return ConditionState(kind)


def on_sample(condition: Condition, state: ConditionState, metric: str, sample: Sample) -> Step:
    """Take one reading (`metric` as stored) of the device; readings of other metrics leave a
    leaf untouched. Returns the new state and the edges, in time order."""
    _check_kind(condition, state)
    if isinstance(condition, AllOf | AnyOf):
        children = condition.all if isinstance(condition, AllOf) else condition.any
        # A child that does not take this metric still sees the time pass (as a tick): the
        # combination is replayed in time order, so every child must have reached this instant
        # (a no_data child on another metric fires when its silence ended before this reading).
        steps = [
            on_sample(child, child_state, metric, sample)
            if _takes(child, metric)
            else on_tick(child, child_state, sample.ts_us)
            for child, child_state in zip(children, state.children, strict=True)
        ]
        return _combine(condition, state, steps)
    if isinstance(condition, Threshold):
        params = condition.threshold
        if metric != params.metric:
            return state, ()
        return _threshold_sample(params, state, sample)
    if isinstance(condition, NoData):
        if condition.no_data.metric is not None and metric != condition.no_data.metric:
            return state, ()
        return _no_data_sample(condition.no_data, state, sample)
    if isinstance(condition, Rate):
        if metric != condition.rate.metric:
            return state, ()
        return _rate_sample(condition.rate, state, sample)
    if isinstance(condition, ZScore):
        if metric != condition.zscore.metric:
            return state, ()
        return _zscore_sample(condition.zscore, state, sample)
    # A schedule ignores the value but not the time: an `all` of a schedule and a threshold
    # must see the window as it is at the reading's time, whenever the last tick ran.
    return _schedule_advance(condition.schedule, state, sample.ts_us)


def on_tick(condition: Condition, state: ConditionState, now_us: int) -> Step:
    """The engine's timer at `now_us`: notices the edges time alone makes true (a for-window
    elapsed with no reading against it, a silence, a schedule's window opening or closing)."""
    _check_kind(condition, state)
    if isinstance(condition, AllOf | AnyOf):
        children = condition.all if isinstance(condition, AllOf) else condition.any
        steps = [
            on_tick(child, child_state, now_us)
            for child, child_state in zip(children, state.children, strict=True)
        ]
        return _combine(condition, state, steps)
    if isinstance(condition, Threshold):
        return _threshold_tick(condition.threshold, state, now_us)
    if isinstance(condition, NoData):
        return _no_data_tick(condition.no_data, state, now_us)
    if isinstance(condition, Schedule):
        return _schedule_advance(condition.schedule, state, now_us)
    # rate and zscore change only with readings.
    return _seen(state, now_us), ()


def effective_condition(rule: Rule, device_id: str) -> Condition:
    """The rule's condition for one device: its per-device overrides applied (validated when the
    rule was, so this does not fail for a rule that loaded)."""
    override = rule.overrides.get(canonical_device_id(device_id), {})
    return apply_overrides(rule.condition, override)


def watched_metrics(condition: Condition) -> frozenset[str] | None:
    """The metrics whose readings the condition takes; None when any reading counts (no_data
    without a metric). The engine skips readings of other metrics; a schedule needs none."""
    if isinstance(condition, AllOf | AnyOf):
        children = condition.all if isinstance(condition, AllOf) else condition.any
        found: set[str] = set()
        for child in children:
            metrics = watched_metrics(child)
            if metrics is None:
                return None
            found |= metrics
        return frozenset(found)
    if isinstance(condition, NoData):
        return None if condition.no_data.metric is None else frozenset({condition.no_data.metric})
    if isinstance(condition, Schedule):
        return frozenset()
    if isinstance(condition, Threshold):
        return frozenset({condition.threshold.metric})
    if isinstance(condition, Rate):
        return frozenset({condition.rate.metric})
    return frozenset({condition.zscore.metric})


def _takes(condition: Condition, metric: str) -> bool:
    metrics = watched_metrics(condition)
    return metrics is None or metric in metrics


def _check_kind(condition: Condition, state: ConditionState) -> None:
    kind = condition_kind(condition)
    if state.kind != kind:
        # A rule edited to another kind must start from a new state; the engine resets it.
        raise ValueError(f"a {state.kind} state given to a {kind} condition")


# ---------------------------------------------------------------------------------------------
# Shared steps
# ---------------------------------------------------------------------------------------------


def _seen(state: ConditionState, ts_us: int) -> ConditionState:
    if state.seen_us is not None and state.seen_us >= ts_us:
        return state
    return replace(state, seen_us=ts_us)


def _edge(state: ConditionState, kind: EdgeKind, ts_us: int) -> tuple[ConditionState, Edge]:
    # Never before the previous edge: a late reading cannot reach behind what was decided.
    if state.changed_us is not None and ts_us < state.changed_us:
        ts_us = state.changed_us
    return replace(state, active=kind == "fire", changed_us=ts_us), Edge(kind, ts_us)


def _is_late(state: ConditionState, ts_us: int) -> bool:
    return state.last_us is not None and ts_us < state.last_us


# ---------------------------------------------------------------------------------------------
# threshold
# ---------------------------------------------------------------------------------------------


def _beyond(params: ThresholdParams, value: float) -> bool:
    if params.above is not None:
        return value > params.above
    assert params.below is not None
    return value < params.below


def _past_clear(params: ThresholdParams, value: float) -> bool:
    if params.above is not None:
        level = params.above if params.clear_below is None else params.clear_below
        return value < level
    assert params.below is not None
    level = params.below if params.clear_above is None else params.clear_above
    return value > level


def _threshold_sample(params: ThresholdParams, state: ConditionState, sample: Sample) -> Step:
    if _is_late(state, sample.ts_us):
        return state, ()
    ts, value = sample.ts_us, sample.value
    for_us = seconds_us(params.for_s)
    # One replace (this runs for every reading of every device in scope): `_seen` and last_us.
    seen = ts if state.seen_us is None or state.seen_us < ts else state.seen_us
    state = replace(state, last_us=ts, seen_us=seen)
    edges: list[Edge] = []
    # The run beyond the trigger held, by the previous reading, until this one: if it passed
    # for_s before now, the alarm fired then, whatever this reading says.
    if not state.active and state.pending_us is not None and ts > state.pending_us + for_us:
        state, edge = _edge(replace(state, pending_us=None), "fire", state.pending_us + for_us)
        edges.append(edge)
    if state.active:
        if _past_clear(params, value):
            state, edge = _edge(state, "clear", ts)
            edges.append(edge)
    elif _beyond(params, value):
        start = ts if state.pending_us is None else state.pending_us
        if ts >= start + for_us:
            state, edge = _edge(replace(state, pending_us=None), "fire", start + for_us)
            edges.append(edge)
        else:
            state = replace(state, pending_us=start)
    elif state.pending_us is not None:
        state = replace(state, pending_us=None)
    return state, tuple(edges)


def _threshold_tick(params: ThresholdParams, state: ConditionState, now_us: int) -> Step:
    state = _seen(state, now_us)
    if state.active or state.pending_us is None:
        return state, ()
    due = state.pending_us + seconds_us(params.for_s)
    # Strictly after: at exactly `due` a reading may still say the run ended then.
    if now_us > due:
        state, edge = _edge(replace(state, pending_us=None), "fire", due)
        return state, (edge,)
    return state, ()


# ---------------------------------------------------------------------------------------------
# no_data
# ---------------------------------------------------------------------------------------------


def _silent_since(state: ConditionState) -> int | None:
    return state.last_us if state.last_us is not None else state.pending_us


def _no_data_sample(params: NoDataParams, state: ConditionState, sample: Sample) -> Step:
    if _is_late(state, sample.ts_us):
        return state, ()
    ts = sample.ts_us
    edges: list[Edge] = []
    since = _silent_since(state)
    if not state.active and since is not None and ts - since > seconds_us(params.for_s):
        state, edge = _edge(state, "fire", since + seconds_us(params.for_s))
        edges.append(edge)
    if state.active:
        state, edge = _edge(state, "clear", ts)
        edges.append(edge)
    return replace(_seen(state, ts), last_us=ts), tuple(edges)


def _no_data_tick(params: NoDataParams, state: ConditionState, now_us: int) -> Step:
    since = _silent_since(state)
    if since is None:
        # Never a reading and no start given: silence counts from the first tick.
        return replace(_seen(state, now_us), pending_us=now_us), ()
    state = _seen(state, now_us)
    if not state.active and now_us - since > seconds_us(params.for_s):
        state, edge = _edge(state, "fire", since + seconds_us(params.for_s))
        return state, (edge,)
    return state, ()


# ---------------------------------------------------------------------------------------------
# rate
# ---------------------------------------------------------------------------------------------


def _rate_sample(params: RateParams, state: ConditionState, sample: Sample) -> Step:
    if _is_late(state, sample.ts_us):
        return state, ()
    ts = sample.ts_us
    oldest_kept = ts - seconds_us(params.window_s)
    window = tuple(item for item in state.values if item[0] >= oldest_kept)
    window = (*window, (ts, sample.value))[-MAX_RATE_READINGS:]
    state = replace(_seen(state, ts), last_us=ts, values=window)
    first_ts, first_value = window[0]
    if ts == first_ts:
        return state, ()  # one instant in the window: no rate yet, nothing changes
    rate = (sample.value - first_value) / ((ts - first_ts) / US_PER_S)
    beyond = (params.above is not None and rate > params.above) or (
        params.below is not None and rate < params.below
    )
    if beyond != state.active:
        state, edge = _edge(state, "fire" if beyond else "clear", ts)
        return state, (edge,)
    return state, ()


# ---------------------------------------------------------------------------------------------
# zscore
# ---------------------------------------------------------------------------------------------


def zscore(baseline: list[float], value: float, min_std: float) -> float:
    """z of `value` against `baseline` (population standard deviation); 0 when the baseline's
    spread is at most `min_std` (a flat baseline triggers nothing instead of dividing by 0)."""
    mean = math.fsum(baseline) / len(baseline)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in baseline) / len(baseline))
    if std <= min_std or std == 0:
        return 0.0
    return (value - mean) / std


def _zscore_sample(params: ZScoreParams, state: ConditionState, sample: Sample) -> Step:
    if _is_late(state, sample.ts_us):
        return state, ()
    ts = sample.ts_us
    edges: tuple[Edge, ...] = ()
    if len(state.values) >= params.n:
        z = zscore([value for _, value in state.values], sample.value, params.min_std)
        beyond = abs(z) >= params.threshold
        if beyond != state.active:
            state, edge = _edge(state, "fire" if beyond else "clear", ts)
            edges = (edge,)
    baseline = (*state.values, (ts, sample.value))[-params.n :]
    return replace(_seen(state, ts), last_us=ts, values=baseline), edges


# ---------------------------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------------------------


def _local_us(day: date, hour: int, zone: ZoneInfo) -> int:
    # A local hour skipped by a DST change (02:00 on a spring-forward day) maps, with fold=0, to
    # the instant the clocks jumped: the window opens as soon as that hour would have started.
    # A repeated hour (autumn) is its first occurrence.
    moment = datetime(day.year, day.month, day.day, hour, tzinfo=zone)
    return int(moment.timestamp()) * US_PER_S


def schedule_windows(params: ScheduleParams, from_us: int, to_us: int) -> list[tuple[int, int]]:
    """The (on, off) instants of every window that can touch [from_us, to_us], in order. A window
    belongs to the day it opens on (`days` filters that day); off < on closes it the next day."""
    zone = ZoneInfo(params.tz)
    day = datetime.fromtimestamp(from_us / US_PER_S, zone).date() - timedelta(days=2)
    last = datetime.fromtimestamp(to_us / US_PER_S, zone).date() + timedelta(days=1)
    windows = []
    while day <= last:
        if params.days is None or WEEKDAYS[day.weekday()] in params.days:
            off_day = day + timedelta(days=1) if params.off_hour < params.on_hour else day
            windows.append(
                (_local_us(day, params.on_hour, zone), _local_us(off_day, params.off_hour, zone))
            )
        day += timedelta(days=1)
    return windows


def schedule_open(params: ScheduleParams, at_us: int) -> bool:
    """True when a window is open at `at_us` (on <= at < off)."""
    return any(on <= at_us < off for on, off in schedule_windows(params, at_us, at_us))


def _schedule_advance(params: ScheduleParams, state: ConditionState, now_us: int) -> Step:
    edges: list[Edge] = []
    if state.seen_us is None:
        start = now_us if state.pending_us is None else state.pending_us
        state = replace(state, seen_us=start)
        if schedule_open(params, start):
            state, edge = _edge(state, "fire", start)
            edges.append(edge)
    assert state.seen_us is not None
    if now_us <= state.seen_us:
        return state, tuple(edges)
    since = state.seen_us
    events = sorted(
        [(on, True) for on, _ in schedule_windows(params, since, now_us)]
        + [(off, False) for _, off in schedule_windows(params, since, now_us)]
    )
    for at_us, opens in events:
        if since < at_us <= now_us and opens != state.active:
            state, edge = _edge(state, "fire" if opens else "clear", at_us)
            edges.append(edge)
    return replace(state, seen_us=now_us), tuple(edges)


# ---------------------------------------------------------------------------------------------
# all / any
# ---------------------------------------------------------------------------------------------


def _combine(condition: AllOf | AnyOf, state: ConditionState, steps: list[Step]) -> Step:
    """Replay the children's edges in time order over their previous activity: the combination
    changes exactly when a child's edge changes it, at that edge's time."""
    combine = all if isinstance(condition, AllOf) else any
    active = [child.active for child in state.children]
    timed = sorted(
        ((edge.ts_us, index, edge) for index, (_, edges) in enumerate(steps) for edge in edges),
        key=lambda item: (item[0], item[1]),
    )
    new = replace(state, children=tuple(child for child, _ in steps))
    out: list[Edge] = []
    position = 0
    while position < len(timed):
        at_us = timed[position][0]
        # Every child edge at one instant applies before the combination is compared, so two
        # children swapping at the same time cause no fire-and-clear of zero length.
        while position < len(timed) and timed[position][0] == at_us:
            _, index, edge = timed[position]
            active[index] = edge.kind == "fire"
            position += 1
        now_active = combine(active)
        if now_active != new.active:
            new, edge = _edge(new, "fire" if now_active else "clear", at_us)
            out.append(edge)
    return new, tuple(out)
