"""The guards between the window model's proposal and the window actuator (issue 17): pure
functions of (configuration, state, proposal, time).

No clock reads and no I/O: the decision loop passes the time in, records the `Judgement` (its
verdicts are the `verdicts` column of `ml_decisions`), sends a command when the judgement has a
`target`, and then keeps the state with `after_move`. A manual window command goes through
`after_manual`, which pauses automatic control. Configuration and state are stored per device
as JSON (`ml_devices`), so limits, the last move and a running manual override survive a
restart.

Positions are window openings in percent, 0 (closed) to 100 (fully open).

The order (GUARDS)
------------------
Every judgement has one verdict per guard, in this order:

1. `enabled`: the off switch. Off -> outcome `off`, nothing sent.
2. `manual_override`: a manual window command within the last `manual_override_s` -> `held`.
3. `inputs`: inputs missing or stale, or no usable proposal (none, not finite) -> `fallback`:
   with `fallback="hold"` nothing is sent; with a position, the window goes there (unless it is
   known to be there already: then nothing is sent either). A fallback move is a safety move:
   confidence, limits (the position is within them), step, deadband and interval are not
   checked ("not checked: fallback"); shadow mode is.
4. `min_confidence`: a confidence below the minimum, or none -> `held`.
5. `limits`: the proposal (rounded to a whole percent, halves up) is clamped into [min, max];
   the verdict is not ok when it clamped, and the move goes on with the clamped position.
6. `max_step`: the move is shortened to `max_step` points from the known position (clamped
   toward the proposal; not ok when it did). An unknown position is not limited.
7. `deadband`: a change smaller than `deadband` points, or none at all -> `held`.
8. `min_interval`: less than `min_interval_s` since the last move -> `held`.
9. `shadow`: shadow mode -> outcome `shadow`, nothing ever sent. A fallback move in shadow mode
   stays outcome `fallback`, with no target and this verdict not ok.

The first guard that stops the move decides the outcome; the guards after it are recorded as
`ok=True` with the detail "not checked". `ok` is False only for the guard that stopped the move
and for a guard that changed it (limits, max_step), so counting False verdicts per guard counts
what each guard did. A move that passes every guard is `actuated` with its `target`.

`judge` returns `off`, `held`, `fallback`, `shadow` or `actuated`; the decision loop adds the
table's other outcomes (`refused`: the command service refused the command, `error`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

US_PER_S = 1_000_000
# Positions are percent open.
POSITION_MIN = 0
POSITION_MAX = 100
# A week: a longer interval or override is better expressed by switching the loop off.
MAX_DURATION_S = 7 * 86_400

Position = Annotated[int, Field(ge=POSITION_MIN, le=POSITION_MAX)]
Seconds = Annotated[float, Field(ge=0, le=MAX_DURATION_S, allow_inf_nan=False)]

# What `judge` decides; the `ml_decisions` table's outcomes are these and `refused`, `error`.
Outcome = Literal["actuated", "held", "shadow", "fallback", "off"]

GUARDS: tuple[str, ...] = (
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


class GuardConfig(BaseModel):
    """One device's guard settings (stored as JSON in `ml_devices.config`). Every field has a
    default, so `GuardConfig()` is a working configuration: on, actuating, the whole range,
    at most one move a minute."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True  # the off switch
    shadow: bool = False  # decide and record, never actuate
    min_position: Position = POSITION_MIN
    max_position: Position = POSITION_MAX
    # The largest change per decision, in points: a model that jumps is followed in steps.
    max_step: Annotated[int, Field(ge=1, le=POSITION_MAX)] = POSITION_MAX
    # The least time between two moves: a window motor and the people in the room both suffer
    # from a window that moves every few seconds.
    min_interval_s: Seconds = 60.0
    # A change smaller than this many points is not made (noise in the model's output).
    deadband: Annotated[int, Field(ge=0, le=POSITION_MAX)] = 3
    min_confidence: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.5
    # A manual window command pauses automatic control this long: the person decided.
    manual_override_s: Seconds = 1800.0
    # Inputs older than this are stale (the loop's feature assembly applies it; `judge` is told).
    stale_after_s: Annotated[float, Field(gt=0, le=MAX_DURATION_S, allow_inf_nan=False)] = 300.0
    # Stale or missing inputs: hold the window where it is, or move it to this position.
    fallback: Literal["hold"] | Position = "hold"

    @model_validator(mode="after")
    def _consistent(self) -> GuardConfig:
        if self.min_position > self.max_position:
            raise ValueError(
                f"min_position {self.min_position} is above max_position {self.max_position}"
            )
        if isinstance(self.fallback, int) and not (
            self.min_position <= self.fallback <= self.max_position
        ):
            raise ValueError(
                f"fallback position {self.fallback} is outside the limits "
                f"[{self.min_position}, {self.max_position}]"
            )
        return self

    def to_json(self) -> dict[str, object]:
        """The configuration as JSON data (`GuardConfig.model_validate` reads it back)."""
        return self.model_dump(mode="json")


@dataclass(frozen=True, slots=True)
class GuardState:
    """What the guards remember of one device (stored as JSON in `ml_devices.state`)."""

    position: int | None = None  # the last known window position (None: unknown)
    last_move_us: int | None = None  # when the window last moved (automatic or manual)
    manual_until_us: int | None = None  # automatic control paused until then

    def to_json(self) -> dict[str, object]:
        """Plain JSON data; `from_json` reads it back exactly."""
        return {
            "position": self.position,
            "last_move_us": self.last_move_us,
            "manual_until_us": self.manual_until_us,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> GuardState:
        """The state `to_json` wrote; absent keys are None. ValueError on anything else (an
        unknown key, a value that is not an integer)."""
        unknown = set(data) - {"position", "last_move_us", "manual_until_us"}
        if unknown:
            raise ValueError(f"unknown guard state keys: {', '.join(sorted(unknown))}")

        def integer(key: str) -> int | None:
            value = data.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"guard state {key} is not an integer: {value!r}")
            return value

        return cls(
            position=integer("position"),
            last_move_us=integer("last_move_us"),
            manual_until_us=integer("manual_until_us"),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """One guard's say about one decision: `ok` False when it stopped or changed the move."""

    guard: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        """`{guard, ok, detail}`, as the `verdicts` column holds it."""
        return {"guard": self.guard, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the guards decided: the outcome, the position to send (None: send nothing) and one
    verdict per guard in GUARDS order."""

    outcome: Outcome
    target: int | None
    verdicts: tuple[Verdict, ...]

    def verdicts_json(self) -> list[dict[str, object]]:
        """The verdicts as the `verdicts` column holds them."""
        return [v.to_json() for v in self.verdicts]


def _seconds(us: int) -> str:
    return f"{us / US_PER_S:.0f} s"


class _Verdicts:
    """Collects verdicts in GUARDS order and fills in the guards a stop left unchecked."""

    def __init__(self) -> None:
        self.items: list[Verdict] = []

    def ok(self, guard: str, detail: str) -> None:
        self.add(guard, True, detail)

    def add(self, guard: str, ok: bool, detail: str) -> None:
        assert GUARDS[len(self.items)] == guard, (guard, len(self.items))
        self.items.append(Verdict(guard, ok, detail))

    def stop(self, guard: str, detail: str, outcome: Outcome, target: int | None) -> Judgement:
        self.add(guard, False, detail)
        rest = GUARDS[len(self.items) :]
        self.items.extend(Verdict(g, True, f"not checked: {guard} decided") for g in rest)
        return Judgement(outcome, target, tuple(self.items))


def judge(
    config: GuardConfig,
    state: GuardState,
    *,
    proposed: float | None,
    confidence: float | None,
    inputs_ok: bool,
    inputs_reason: str | None,
    now_us: int,
) -> Judgement:
    """Run the guards in order (module docstring) over the model's `proposed` position and its
    `confidence`. `inputs_ok` False (with `inputs_reason`, e.g. "temperature stale 412 s")
    means the inputs are missing or stale: the fallback decides."""
    v = _Verdicts()
    if not config.enabled:
        return v.stop("enabled", "automatic control is switched off", "off", None)
    v.ok("enabled", "automatic control is on")

    if state.manual_until_us is not None and now_us < state.manual_until_us:
        left = f"{math.ceil((state.manual_until_us - now_us) / US_PER_S)} s"
        return v.stop(
            "manual_override", f"paused by a manual command for {left} more", "held", None
        )
    v.ok(
        "manual_override",
        "no manual command" if state.manual_until_us is None else "the manual override ended",
    )

    problem: str | None = None
    if not inputs_ok:
        problem = inputs_reason or "inputs missing or stale"
    elif proposed is None:
        problem = "no proposal from the model"
    elif not math.isfinite(proposed):
        problem = f"the model proposed {proposed}"
    if problem is not None:
        return _fallback(v, config, state, problem)
    assert proposed is not None
    v.ok("inputs", "inputs fresh")

    if confidence is None or not math.isfinite(confidence) or confidence < config.min_confidence:
        shown = "none" if confidence is None else f"{confidence:.3f}"
        return v.stop(
            "min_confidence",
            f"confidence {shown} below the minimum {config.min_confidence}",
            "held",
            None,
        )
    v.ok("min_confidence", f"confidence {confidence:.3f} >= {config.min_confidence}")

    wanted = math.floor(proposed + 0.5)  # halves up (round() would take 42.5 to 42)
    target = min(max(wanted, config.min_position), config.max_position)
    if target != wanted:
        v.add(
            "limits",
            False,
            f"proposal {proposed:.1f} clamped to {target} "
            f"(limits {config.min_position}-{config.max_position})",
        )
    else:
        v.ok("limits", f"{target} within {config.min_position}-{config.max_position}")

    position = state.position
    if position is None:
        v.ok("max_step", "position unknown: the step is not limited")
    elif abs(target - position) > config.max_step:
        stepped = position + config.max_step * (1 if target > position else -1)
        v.add(
            "max_step",
            False,
            f"{position} -> {target} shortened to {stepped} (max step {config.max_step})",
        )
        target = stepped
    else:
        v.ok("max_step", f"step {abs(target - position)} <= {config.max_step}")

    if position is not None:
        change = abs(target - position)
        if change == 0:
            return v.stop("deadband", f"already at {position}", "held", None)
        if change < config.deadband:
            return v.stop(
                "deadband", f"change {change} below the deadband {config.deadband}", "held", None
            )
        v.ok("deadband", f"change {change} >= {config.deadband}")
    else:
        v.ok("deadband", "position unknown")

    if state.last_move_us is not None:
        since_us = now_us - state.last_move_us
        if since_us < config.min_interval_s * US_PER_S:
            return v.stop(
                "min_interval",
                f"last move {_seconds(since_us)} ago, less than {config.min_interval_s:.0f} s",
                "held",
                None,
            )
        v.ok("min_interval", f"last move {_seconds(since_us)} ago")
    else:
        v.ok("min_interval", "no move yet")

    if config.shadow:
        return v.stop("shadow", f"shadow mode: would move to {target}", "shadow", None)
    v.ok("shadow", "actuating")
    return Judgement("actuated", target, tuple(v.items))


def _fallback(v: _Verdicts, config: GuardConfig, state: GuardState, problem: str) -> Judgement:
    """The inputs guard stopped the model's move: hold, or move to the fallback position."""
    position = config.fallback
    if not isinstance(position, int):  # "hold"
        return v.stop("inputs", f"{problem}: holding", "fallback", None)
    if state.position == position:
        return v.stop("inputs", f"{problem}: already at the fallback {position}", "fallback", None)
    v.add("inputs", False, f"{problem}: fallback to {position}")
    # Confidence, step, deadband and interval judge the model's moves, not the safety move.
    for guard in GUARDS[len(v.items) : GUARDS.index("shadow")]:
        v.ok(guard, "not checked: fallback")
    if config.shadow:
        v.add("shadow", False, f"shadow mode: would move to {position}")
        return Judgement("fallback", None, tuple(v.items))
    v.ok("shadow", "actuating")
    return Judgement("fallback", position, tuple(v.items))


def after_move(state: GuardState, target: int, now_us: int) -> GuardState:
    """The state after the loop sent `target` (the command was accepted): the window is taken
    to be there from now on."""
    return replace(state, position=target, last_move_us=now_us)


def after_manual(
    state: GuardState, position: int | None, now_us: int, config: GuardConfig
) -> GuardState:
    """The state after a manual window command to `position` (None: a command whose position is
    not known, e.g. "stop"): automatic control pauses for `manual_override_s` from now."""
    return replace(
        state,
        position=position,
        last_move_us=now_us,
        manual_until_us=now_us + int(config.manual_override_s * US_PER_S),
    )
