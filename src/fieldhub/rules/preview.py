"""What a rule would have done: its condition for one device over stored readings, as alarm spans
and the actions that would have run.

Pure, and no second implementation: the readings and ticks go through `conditions.on_sample` and
`conditions.on_tick`, the functions the live engine calls, in time order (at one instant the
readings before the tick; the order does not change the edges, see conditions.py). A preview
assumes nobody acknowledges: repeats and escalation run for as long as the alarm is active.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fieldhub.rules.conditions import (
    ConditionState,
    Edge,
    Sample,
    effective_condition,
    initial,
    on_sample,
    on_tick,
    seconds_us,
)
from fieldhub.rules.model import NOTIFY_KINDS, Action, Notify, Rule, action_kind

Reason = Literal["fire", "clear", "repeat", "escalate"]
# A preview never plans more than this many actions (a 1-s repeat over a week would be 600,000).
MAX_PLANNED_ACTIONS = 10_000


@dataclass(frozen=True, slots=True)
class Span:
    """One alarm: fired at `fired_us`, cleared at `cleared_us` (None: still active at the end)."""

    fired_us: int
    cleared_us: int | None


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """An action that would have run at `at_us` because of `reason`."""

    at_us: int
    reason: Reason
    kind: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Preview:
    """The edges, the spans they make, the actions, and the state at the end."""

    edges: tuple[Edge, ...]
    spans: tuple[Span, ...]
    actions: tuple[PlannedAction, ...]
    state: ConditionState
    truncated: bool = False
    ticks: int = 0


def spans_of(edges: Iterable[Edge]) -> list[Span]:
    """Fold fire/clear edges into alarm spans."""
    spans: list[Span] = []
    fired: int | None = None
    for edge in edges:
        if edge.kind == "fire" and fired is None:
            fired = edge.ts_us
        elif edge.kind == "clear" and fired is not None:
            spans.append(Span(fired, edge.ts_us))
            fired = None
    if fired is not None:
        spans.append(Span(fired, None))
    return spans


def preview(
    rule: Rule,
    device_id: str,
    readings: Sequence[tuple[str, Sample]],
    *,
    start_us: int,
    end_us: int,
    tick_s: float,
) -> Preview:
    """Run the rule's condition for `device_id` (overrides applied) over `readings` (metric,
    sample), sorted by time, with a tick every `tick_s` from `start_us` to `end_us`. Readings
    outside [start_us, end_us] are skipped."""
    if tick_s <= 0:
        raise ValueError("tick_s must be positive")
    if end_us < start_us:
        raise ValueError("end_us is before start_us")
    condition = effective_condition(rule, device_id)
    state = initial(condition, start_us=start_us)
    edges: list[Edge] = []
    tick_us = seconds_us(tick_s)
    next_tick = start_us
    ticks = 0
    for metric, sample in readings:
        if sample.ts_us < start_us or sample.ts_us > end_us:
            continue
        while next_tick < sample.ts_us:
            state, found = on_tick(condition, state, next_tick)
            edges.extend(found)
            next_tick += tick_us
            ticks += 1
        state, found = on_sample(condition, state, metric, sample)
        edges.extend(found)
    while next_tick <= end_us:
        state, found = on_tick(condition, state, next_tick)
        edges.extend(found)
        next_tick += tick_us
        ticks += 1
    spans = spans_of(edges)
    actions, truncated = plan_actions(rule, edges, spans, end_us=end_us)
    return Preview(tuple(edges), tuple(spans), tuple(actions), state, truncated, ticks)


def plan_actions(
    rule: Rule, edges: Sequence[Edge], spans: Sequence[Span], *, end_us: int
) -> tuple[list[PlannedAction], bool]:
    """The actions the edges run (each action's `when`), plus the repeats every
    `repeat_every_s` and the escalation after `escalate.after_s` while an alarm is active (no one
    acknowledges in a preview), in time order; True when cut at MAX_PLANNED_ACTIONS."""
    planned: list[PlannedAction] = []
    for edge in edges:
        for action in rule.actions:
            if _runs_on(action, edge.kind):
                planned.append(_planned(edge.ts_us, edge.kind, action))
    notify = [action for action in rule.actions if action_kind(action) in NOTIFY_KINDS]
    for span in spans:
        until = span.cleared_us if span.cleared_us is not None else end_us + 1
        if rule.repeat_every_s is not None:
            step = seconds_us(rule.repeat_every_s)
            at_us = span.fired_us + step
            while at_us < until and len(planned) <= MAX_PLANNED_ACTIONS:
                planned.extend(
                    _planned(at_us, "repeat", action)
                    for action in notify
                    if _runs_on(action, "fire")
                )
                at_us += step
        if rule.escalate is not None:
            at_us = span.fired_us + seconds_us(rule.escalate.after_s)
            if at_us < until:
                planned.append(_planned(at_us, "escalate", rule.escalate.to))
    planned.sort(key=lambda item: item.at_us)
    truncated = len(planned) > MAX_PLANNED_ACTIONS
    return planned[:MAX_PLANNED_ACTIONS], truncated


def _runs_on(action: Action | Notify, edge: Literal["fire", "clear"]) -> bool:
    kind = action_kind(action)
    if kind == "alarm":
        return True  # raised on fire, cleared on clear
    params = getattr(action, kind)
    when: str = params.when
    return when in (edge, "both")


def _planned(at_us: int, reason: Reason, action: Action | Notify) -> PlannedAction:
    kind = action_kind(action)
    params: dict[str, Any] = getattr(action, kind).model_dump(mode="json", exclude_none=True)
    return PlannedAction(at_us, reason, kind, params)
