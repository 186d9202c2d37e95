"""The window loop's guards (fieldhub.ml.guards): each guard stopping a move, their order,
clamping, shadow mode, the manual override window, the fallback, JSON round-trips and the
configuration's validation."""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from fieldhub.ml.guards import (
    GUARDS,
    GuardConfig,
    GuardState,
    Judgement,
    Outcome,
    Verdict,
    after_manual,
    after_move,
    judge,
)
from fieldhub.store.types import ML_OUTCOMES

S = 1_000_000
T0 = 1_764_000_000 * S
# Last moved long ago, at 40: every guard lets a move to 70 through.
SETTLED = GuardState(position=40, last_move_us=T0 - 3600 * S)


def decide(
    config: GuardConfig | None = None,
    state: GuardState = SETTLED,
    *,
    proposed: float | None = 70.0,
    confidence: float | None = 0.9,
    inputs_ok: bool = True,
    inputs_reason: str | None = None,
    now_us: int = T0,
) -> Judgement:
    return judge(
        config or GuardConfig(),
        state,
        proposed=proposed,
        confidence=confidence,
        inputs_ok=inputs_ok,
        inputs_reason=inputs_reason,
        now_us=now_us,
    )


def verdict(j: Judgement, guard: str) -> Verdict:
    (found,) = [v for v in j.verdicts if v.guard == guard]
    return found


def stopped_by(j: Judgement) -> list[str]:
    return [v.guard for v in j.verdicts if not v.ok]


def assert_every_guard_in_order(j: Judgement) -> None:
    assert tuple(v.guard for v in j.verdicts) == GUARDS


def test_a_move_that_passes_every_guard_is_actuated() -> None:
    """Nothing objects: the target is the proposal, every verdict ok."""
    j = decide()
    assert (j.outcome, j.target) == ("actuated", 70)
    assert_every_guard_in_order(j)
    assert all(v.ok for v in j.verdicts)
    assert not any(v.detail.startswith("not checked") for v in j.verdicts)


def test_the_order_of_the_guards() -> None:
    """The fixed documented order, and judge's outcomes are the table's."""
    assert GUARDS == (
        "enabled",
        "manual_override",
        "inputs",
        "min_confidence",
        "limits",
        "max_step",
        "deadband",
        "min_interval",
        "shadow",
    )
    assert set(get_args(Outcome)) <= set(ML_OUTCOMES)


@pytest.mark.parametrize(
    ("guard", "config", "state", "changes", "outcome"),
    [
        ("enabled", {"enabled": False}, SETTLED, {}, "off"),
        (
            "manual_override",
            {},
            GuardState(position=40, last_move_us=T0 - 60 * S, manual_until_us=T0 + S),
            {},
            "held",
        ),
        (
            "inputs",
            {},
            SETTLED,
            {"inputs_ok": False, "inputs_reason": "temperature stale"},
            "fallback",
        ),
        ("min_confidence", {"min_confidence": 0.95}, SETTLED, {}, "held"),
        ("deadband", {"deadband": 31}, SETTLED, {}, "held"),
        ("min_interval", {"min_interval_s": 3601}, SETTLED, {}, "held"),
        ("shadow", {"shadow": True}, SETTLED, {}, "shadow"),
    ],
)
def test_each_guard_stops_a_move(
    guard: str,
    config: dict[str, Any],
    state: GuardState,
    changes: dict[str, Any],
    outcome: Outcome,
) -> None:
    """The guard's verdict is the only one not ok, the outcome is its, nothing is sent, and
    the guards after it are recorded as not checked."""
    j = decide(GuardConfig(**config), state, **changes)
    assert (j.outcome, j.target) == (outcome, None)
    assert_every_guard_in_order(j)
    assert stopped_by(j) == [guard]
    after = j.verdicts[GUARDS.index(guard) + 1 :]
    assert all(v.ok and v.detail == f"not checked: {guard} decided" for v in after)
    before = j.verdicts[: GUARDS.index(guard)]
    assert not any(v.detail.startswith("not checked") for v in before)


def test_the_first_guard_in_order_decides() -> None:
    """With every guard objecting, each one removed in turn hands the decision to the next."""
    objections: list[tuple[str, dict[str, Any]]] = [
        ("enabled", {"enabled": False}),
        ("min_confidence", {"min_confidence": 0.95}),
        ("deadband", {"deadband": 31}),
        ("min_interval", {"min_interval_s": 3601}),
        ("shadow", {"shadow": True}),
    ]
    state = GuardState(position=40, last_move_us=T0 - 3600 * S, manual_until_us=T0 + S)
    decided = []
    for n in range(len(objections)):
        config: dict[str, Any] = {}
        for _, objection in objections[n:]:
            config.update(objection)
        j = decide(GuardConfig(**config), state)
        decided.append(stopped_by(j))
        # The manual override comes right after the off switch.
        if n == 0:
            assert stopped_by(j) == ["enabled"]
            j = decide(GuardConfig(**{**config, "enabled": True}), state)
            assert stopped_by(j) == ["manual_override"]
        state = GuardState(position=40, last_move_us=T0 - 3600 * S)
    assert decided == [[guard] for guard, _ in objections]
    broken = decide(GuardConfig(min_confidence=0.95), proposed=None)
    assert stopped_by(broken) == ["inputs"]


def test_limits_clamp_and_the_move_goes_on() -> None:
    """A proposal outside the limits moves to the limit; the verdict says so."""
    config = GuardConfig(min_position=10, max_position=60)
    j = decide(config, proposed=93.4)
    assert (j.outcome, j.target) == ("actuated", 60)
    assert stopped_by(j) == ["limits"]
    assert "93.4 clamped to 60" in verdict(j, "limits").detail
    j = decide(config, proposed=-5.0)
    assert (j.outcome, j.target) == ("actuated", 10)
    assert not verdict(j, "limits").ok
    j = decide(config, proposed=59.6)  # rounds to 60: inside
    assert (j.target, verdict(j, "limits").ok) == (60, True)
    j = decide(config, proposed=60.5)  # halves round up: 61, clamped
    assert (j.target, verdict(j, "limits").ok) == (60, False)
    assert decide(GuardConfig(), proposed=42.5).target == 43


def test_max_step_clamps_toward_the_proposal() -> None:
    """A long move is shortened to max_step in the proposal's direction."""
    config = GuardConfig(max_step=10)
    up = decide(config, proposed=95.0)
    assert (up.outcome, up.target) == ("actuated", 50)
    assert stopped_by(up) == ["max_step"]
    assert "40 -> 95 shortened to 50" in verdict(up, "max_step").detail
    down = decide(config, proposed=0.0)
    assert (down.outcome, down.target) == ("actuated", 30)
    near = decide(config, proposed=48.0)
    assert (near.target, verdict(near, "max_step").ok) == (48, True)
    # Without a known position there is nothing to step from.
    unknown = decide(config, GuardState(), proposed=95.0)
    assert (unknown.outcome, unknown.target) == ("actuated", 95)
    assert "unknown" in verdict(unknown, "max_step").detail


def test_clamps_add_up_and_the_deadband_judges_the_clamped_move() -> None:
    """Limits then step: a clamped step that is too small is held by the deadband."""
    config = GuardConfig(max_position=42, deadband=3)
    j = decide(config, proposed=80.0)
    assert (j.outcome, j.target) == ("held", None)
    assert stopped_by(j) == ["limits", "deadband"]
    assert verdict(j, "deadband").detail == "change 2 below the deadband 3"
    j = decide(GuardConfig(max_position=80, max_step=5), proposed=99.0)
    assert (j.outcome, j.target) == ("actuated", 45)
    assert stopped_by(j) == ["limits", "max_step"]


def test_no_change_is_held_even_without_a_deadband() -> None:
    """Already there: nothing to send."""
    j = decide(GuardConfig(deadband=0), proposed=40.2)
    assert (j.outcome, j.target) == ("held", None)
    assert verdict(j, "deadband").detail == "already at 40"
    j = decide(GuardConfig(deadband=0), proposed=41.0)
    assert (j.outcome, j.target) == ("actuated", 41)


def test_min_interval_counts_from_the_last_move() -> None:
    """Held until min_interval_s after the last move, actuated from then on."""
    config = GuardConfig(min_interval_s=60)
    state = GuardState(position=40, last_move_us=T0)
    assert decide(config, state, now_us=T0 + 59 * S).outcome == "held"
    assert decide(config, state, now_us=T0 + 60 * S).outcome == "actuated"
    assert decide(config, GuardState(position=40), now_us=T0).outcome == "actuated"


def test_min_confidence() -> None:
    """Below the minimum, none, or not a number: held; at the minimum: through."""
    config = GuardConfig(min_confidence=0.6)
    assert decide(config, confidence=0.59).outcome == "held"
    assert decide(config, confidence=None).outcome == "held"
    assert decide(config, confidence=float("nan")).outcome == "held"
    assert decide(config, confidence=0.6).outcome == "actuated"
    assert decide(GuardConfig(min_confidence=0), confidence=None).outcome == "held"
    assert decide(GuardConfig(min_confidence=0), confidence=0.0).outcome == "actuated"


def test_shadow_never_gives_a_target_to_send() -> None:
    """Shadow mode decides and records the move it would make, and never sends one."""
    shadow = GuardConfig(shadow=True, fallback=20)
    cases = [
        {},
        {"proposed": 100.0},
        {"proposed": 40.0},
        {"confidence": 0.1},
        {"inputs_ok": False},
        {"proposed": None},
        {"now_us": T0 - 3599 * S},
    ]
    for case in cases:
        assert decide(shadow, **case).target is None, case
    j = decide(shadow)
    assert j.outcome == "shadow"
    assert verdict(j, "shadow").detail == "shadow mode: would move to 70"
    # A fallback move in shadow mode is recorded as a fallback, and not sent either.
    j = decide(shadow, inputs_ok=False, inputs_reason="volume stale 400 s")
    assert (j.outcome, j.target) == ("fallback", None)
    assert stopped_by(j) == ["inputs", "shadow"]
    assert verdict(j, "shadow").detail == "shadow mode: would move to 20"


def test_the_manual_override_window() -> None:
    """A manual command pauses automatic control for manual_override_s, to the microsecond."""
    config = GuardConfig(manual_override_s=1800)
    state = after_manual(SETTLED, 80, T0, config)
    assert state == GuardState(position=80, last_move_us=T0, manual_until_us=T0 + 1800 * S)
    assert decide(config, state, now_us=T0).outcome == "held"
    held = decide(config, state, now_us=T0 + 1800 * S - 1)
    assert (held.outcome, stopped_by(held)) == ("held", ["manual_override"])
    assert verdict(held, "manual_override").detail == "paused by a manual command for 1 s more"
    assert (
        "1200 s more"
        in verdict(decide(config, state, now_us=T0 + 600 * S), "manual_override").detail
    )
    ended = decide(config, state, now_us=T0 + 1800 * S)
    assert (ended.outcome, ended.target) == ("actuated", 70)
    assert verdict(ended, "manual_override").detail == "the manual override ended"
    # An unknown manual position: the step is not limited afterwards.
    state = after_manual(SETTLED, None, T0, GuardConfig(manual_override_s=0, max_step=5))
    assert state.position is None
    j = decide(GuardConfig(max_step=5), state, now_us=T0 + 60 * S)
    assert (j.outcome, j.target) == ("actuated", 70)
    # The override also holds a fallback: the person decided.
    j = decide(GuardConfig(fallback=0), after_manual(SETTLED, 80, T0, config), inputs_ok=False)
    assert (j.outcome, j.target, stopped_by(j)) == ("held", None, ["manual_override"])


def test_after_move_keeps_the_override_and_records_the_move() -> None:
    """A sent move is the new position and the last move's time."""
    state = GuardState(position=40, last_move_us=T0 - 3600 * S, manual_until_us=T0 - S)
    assert after_move(state, 70, T0) == GuardState(
        position=70, last_move_us=T0, manual_until_us=T0 - S
    )


def test_fallback_holds_or_moves_to_its_position() -> None:
    """Missing or stale inputs, or no usable proposal: hold, or the fallback position."""
    hold = decide(GuardConfig(), inputs_ok=False, inputs_reason="temperature stale 412 s")
    assert (hold.outcome, hold.target) == ("fallback", None)
    assert stopped_by(hold) == ["inputs"]
    assert verdict(hold, "inputs").detail == "temperature stale 412 s: holding"

    config = GuardConfig(fallback=15, min_interval_s=3600 * 24, max_step=5, min_confidence=1)
    move = decide(config, inputs_ok=False, confidence=None)
    # A safety move: not held by the interval, step or confidence, and the window goes there.
    assert (move.outcome, move.target) == ("fallback", 15)
    assert stopped_by(move) == ["inputs"]
    assert verdict(move, "inputs").detail == "inputs missing or stale: fallback to 15"
    checked = [v.detail for v in move.verdicts[GUARDS.index("inputs") + 1 : -1]]
    assert checked == ["not checked: fallback"] * 5
    assert verdict(move, "shadow").ok

    there = decide(config, GuardState(position=15), inputs_ok=False)
    assert (there.outcome, there.target) == ("fallback", None)
    assert "already at the fallback 15" in verdict(there, "inputs").detail

    for proposed, detail in ((None, "no proposal from the model"), (float("nan"), "nan")):
        j = decide(GuardConfig(), proposed=proposed)
        assert (j.outcome, j.target) == ("fallback", None)
        assert detail in verdict(j, "inputs").detail
    assert decide(GuardConfig(), proposed=float("inf")).outcome == "fallback"


def test_config_json_round_trip() -> None:
    """Every setting survives JSON, "hold" and a position alike; the defaults are the doc's."""
    default = GuardConfig()
    assert default.to_json() == {
        "enabled": True,
        "shadow": False,
        "min_position": 0,
        "max_position": 100,
        "max_step": 100,
        "min_interval_s": 60.0,
        "deadband": 3,
        "min_confidence": 0.5,
        "manual_override_s": 1800.0,
        "stale_after_s": 300.0,
        "fallback": "hold",
    }
    custom = GuardConfig(
        enabled=False,
        shadow=True,
        min_position=5,
        max_position=80,
        max_step=20,
        min_interval_s=120.5,
        deadband=0,
        min_confidence=0.75,
        manual_override_s=0,
        stale_after_s=90,
        fallback=10,
    )
    for config in (default, custom):
        text = json.dumps(config.to_json())
        assert GuardConfig.model_validate(json.loads(text)) == config
        assert GuardConfig.model_validate_json(config.model_dump_json()) == config
    assert GuardConfig.model_validate({}) == default


def test_state_json_round_trip() -> None:
    """The state survives JSON exactly; absent keys are None; anything else is refused."""
    for state in (
        GuardState(),
        SETTLED,
        GuardState(position=0, last_move_us=0, manual_until_us=T0),
    ):
        assert GuardState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert GuardState.from_json({"position": 5}) == GuardState(position=5)
    with pytest.raises(ValueError, match="unknown guard state keys: colour"):
        GuardState.from_json({"colour": "red"})
    with pytest.raises(ValueError, match="position is not an integer"):
        GuardState.from_json({"position": 4.5})
    with pytest.raises(ValueError, match="last_move_us is not an integer"):
        GuardState.from_json({"last_move_us": True})


def test_verdicts_as_the_table_stores_them() -> None:
    """A judgement's verdicts as the `verdicts` column's JSON list of {guard, ok, detail}."""
    j = decide(GuardConfig(shadow=True))
    data = j.verdicts_json()
    assert json.loads(json.dumps(data)) == data
    assert [d["guard"] for d in data] == list(GUARDS)
    assert data[-1] == {"guard": "shadow", "ok": False, "detail": "shadow mode: would move to 70"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_position": 60, "max_position": 50}, "min_position 60 is above max_position 50"),
        ({"max_position": 50, "fallback": 60}, "fallback position 60 is outside the limits"),
        ({"min_position": 20, "fallback": 10}, "fallback position 10 is outside the limits"),
        ({"max_position": 101}, "less than or equal to 100"),
        ({"min_position": -1}, "greater than or equal to 0"),
        ({"max_step": 0}, "greater than or equal to 1"),
        ({"deadband": -1}, "greater than or equal to 0"),
        ({"min_confidence": 1.5}, "less than or equal to 1"),
        ({"min_interval_s": -1}, "greater than or equal to 0"),
        ({"manual_override_s": float("inf")}, "finite number"),
        ({"stale_after_s": 0}, "greater than 0"),
        ({"fallback": "open"}, "fallback"),
        ({"fallback": 101}, "fallback"),
        ({"max_steps": 5}, "Extra inputs are not permitted"),
    ],
)
def test_config_validation_errors(settings: dict[str, Any], message: str) -> None:
    """An invalid configuration is a ValidationError saying what is wrong."""
    with pytest.raises(ValidationError, match=message):
        GuardConfig.model_validate(settings)


def test_config_is_immutable() -> None:
    """A configuration is changed by validating a new one, never in place."""
    config = GuardConfig()
    with pytest.raises(ValidationError):
        config.max_step = 5  # type: ignore[misc]
