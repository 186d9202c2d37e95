"""Preview runs the live evaluation: feeding readings one by one with ticks at any times (and
restarts through JSON) gives the same edges, at the same times, as a preview of the same
readings with ticks every `tick_s`."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fieldhub.clock import US_PER_S
from fieldhub.rules.conditions import (
    ConditionState,
    Edge,
    Sample,
    effective_condition,
    initial,
    on_sample,
    on_tick,
)
from fieldhub.rules.model import Rule
from fieldhub.rules.preview import Span, preview

T0 = 1_700_000_000 * US_PER_S
DEVICE = "3C:E9:0E:72:12:4C"
METRICS = ("temperature", "humidity")


def make_rule(condition: dict[str, Any], **extra: Any) -> Rule:
    return Rule.model_validate(
        {
            "id": "r",
            "name": "r",
            "scope": {"all": True},
            "condition": condition,
            "actions": [{"alarm": {}}],
            **extra,
        }
    )


levels = st.integers(min_value=0, max_value=40).map(float)
seconds = st.sampled_from([0, 30, 60, 300, 600])
metric = st.sampled_from(METRICS)


@st.composite
def thresholds(draw: st.DrawFn) -> dict[str, Any]:
    level = draw(levels)
    band = draw(st.integers(min_value=0, max_value=5))
    if draw(st.booleans()):
        return {"threshold": {"metric": draw(metric), "above": level, "clear_below": level - band,
                              "for_s": draw(seconds)}}  # fmt: skip
    return {"threshold": {"metric": draw(metric), "below": level, "clear_above": level + band,
                          "for_s": draw(seconds)}}  # fmt: skip


leaf = st.one_of(
    thresholds(),
    st.builds(
        lambda for_s, m: {"no_data": {"for_s": for_s, **({"metric": m} if m else {})}},
        st.sampled_from([60, 120, 400]),
        st.sampled_from([None, *METRICS]),
    ),
    st.builds(
        lambda m, w, a: {"rate": {"metric": m, "window_s": w, "above": a}},
        metric,
        st.sampled_from([60, 300]),
        st.sampled_from([0.0, 0.01, 0.05]),
    ),
    st.builds(
        lambda m, n, t: {"zscore": {"metric": m, "n": n, "threshold": t}},
        metric,
        st.integers(min_value=2, max_value=6),
        st.sampled_from([0.5, 1.5, 2.0]),
    ),
    st.builds(
        lambda on, off: {"schedule": {"tz": "Europe/Berlin", "on_hour": on, "off_hour": off}},
        st.integers(min_value=0, max_value=23),
        st.integers(min_value=0, max_value=23),
    ).filter(lambda c: c["schedule"]["on_hour"] != c["schedule"]["off_hour"]),
)
conditions = st.recursive(
    leaf,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda c: {"all": c}),
        st.lists(children, min_size=1, max_size=3).map(lambda c: {"any": c}),
    ),
    max_leaves=4,
)

# Readings: gaps in seconds (0 allowed: two metrics at one instant), values on a coarse grid.
readings = st.lists(
    st.tuples(st.integers(min_value=0, max_value=400), metric, levels),
    max_size=60,
)


def live(
    rule: Rule, timeline: list[tuple[int, str, float]], ticks: list[int], restarts: set[int]
) -> list[Edge]:
    """The engine's way: readings one by one, ticks at its own times, in time order (readings
    first at one instant), the state through JSON at the given steps."""
    condition = effective_condition(rule, DEVICE)
    state = initial(condition, start_us=T0)
    events = sorted(
        [(ts, 0, name, value) for ts, name, value in timeline] + [(ts, 1, "", 0.0) for ts in ticks],
        key=lambda event: (event[0], event[1]),
    )
    edges: list[Edge] = []
    for step, (ts, is_tick, name, value) in enumerate(events):
        if step in restarts:
            state = ConditionState.from_json(json.loads(json.dumps(state.to_json())))
        if is_tick:
            state, found = on_tick(condition, state, ts)
        else:
            state, found = on_sample(condition, state, name, Sample(ts, value))
        edges.extend(found)
    return edges


@settings(max_examples=300, deadline=None)
@given(
    condition=conditions,
    gaps=readings,
    tick_times=st.lists(st.integers(min_value=0, max_value=30_000), max_size=40),
    restarts=st.sets(st.integers(min_value=0, max_value=100), max_size=5),
)
def test_live_feeding_equals_preview(
    condition: dict[str, Any],
    gaps: list[tuple[int, str, float]],
    tick_times: list[int],
    restarts: set[int],
) -> None:
    rule = make_rule(condition)
    timeline = []
    at_us = T0
    for gap, name, value in gaps:
        at_us += gap * US_PER_S
        timeline.append((at_us, name, value))
    end_us = max(at_us, T0) + 1_000 * US_PER_S
    # The preview ticks on a grid; live ticks at random instants, plus once at the end so both
    # have noticed what time alone makes true by then.
    result = preview(
        rule,
        DEVICE,
        [(name, Sample(ts, value)) for ts, name, value in timeline],
        start_us=T0,
        end_us=end_us,
        tick_s=45,
    )
    ticks = sorted({T0 + t * US_PER_S for t in tick_times if T0 + t * US_PER_S < end_us})
    got = live(rule, timeline, [*ticks, end_us], restarts)
    assert got == list(result.edges)


@settings(max_examples=200, deadline=None)
@given(
    above=levels,
    band=st.integers(min_value=1, max_value=5),
    values=st.lists(levels, max_size=80),
)
def test_hysteresis_fires_at_most_once_per_excursion_beyond_the_clear_level(
    above: float, band: int, values: list[float]
) -> None:
    rule = make_rule({"threshold": {"metric": "temperature", "above": above,
                                    "clear_below": above - band}})  # fmt: skip
    samples = [("temperature", Sample(T0 + i * US_PER_S, v)) for i, v in enumerate(values)]
    result = preview(rule, DEVICE, samples, start_us=T0, end_us=T0 + 100 * US_PER_S, tick_s=10)
    # An excursion: a maximal run of readings not below the clear level.
    excursions: list[list[float]] = []
    run: list[float] = []
    for value in values:
        if value < above - band:
            if run:
                excursions.append(run)
            run = []
        else:
            run.append(value)
    if run:
        excursions.append(run)
    fires = sum(edge.kind == "fire" for edge in result.edges)
    assert fires == sum(any(v > above for v in excursion) for excursion in excursions)


def test_preview_gives_spans_and_the_actions_that_would_have_run() -> None:
    rule = make_rule(
        {"threshold": {"metric": "temperature", "above": 8, "clear_below": 6, "for_s": 600}},
        actions=[
            {"alarm": {}},
            {"webhook": {"url": "https://hooks.example/x", "secret_env": "HOOK_SECRET"}},
            {"email": {"to": ["ops@example.com"], "when": "fire"}},
        ],
        repeat_every_s=3600,
        escalate={"after_s": 7200, "to": {"email": {"to": ["boss@example.com"]}}},
        overrides={DEVICE: {"above": 6, "clear_below": 4}},
    )
    hour = 3600 * US_PER_S
    samples = [("temperature", Sample(T0 + i * 60 * US_PER_S, 7.0)) for i in range(200)]
    samples += [("temperature", Sample(T0 + 200 * 60 * US_PER_S, 3.0))]
    result = preview(rule, DEVICE, samples, start_us=T0, end_us=T0 + 4 * hour, tick_s=60)
    # The device's override: above 6, so 7 °C fires after 600 s; 3 °C at 200 min clears.
    assert result.spans == (Span(T0 + 600 * US_PER_S, T0 + 200 * 60 * US_PER_S),)
    plan = [(a.reason, a.kind, (a.at_us - T0) // US_PER_S) for a in result.actions]
    assert plan == [
        ("fire", "alarm", 600),
        ("fire", "webhook", 600),
        ("fire", "email", 600),
        ("repeat", "webhook", 4200),
        ("repeat", "email", 4200),
        ("repeat", "webhook", 7800),
        ("repeat", "email", 7800),
        ("escalate", "email", 7800),
        ("repeat", "webhook", 11400),
        ("repeat", "email", 11400),
        ("clear", "alarm", 12000),
        ("clear", "webhook", 12000),
    ]
    assert result.actions[7].params == {"to": ["boss@example.com"], "when": "both"}
    # Another device has no override: 7 °C is not above 8.
    other = preview(rule, "fridge-2", samples, start_us=T0, end_us=T0 + 4 * hour, tick_s=60)
    assert other.spans == ()
