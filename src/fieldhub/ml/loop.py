"""The window loop: temperature, humidity and sound -> the active model -> the guards -> a tracked
window command, every decision on record (docs/ml.md).

Three things start a decision for a device:

- **its own trigger** (`trigger.py`, the window-control backbone's rule): every `interval_s` the
  means of the last `window_s` of each feature against the means at the device's last decision,
  over the features' standard deviations of the last `baseline_s`;
- **a request** on `ml/inference/request/{id}` from a backbone that still runs (ingest hands
  them over after their batch commits): its window means are the features;
- nothing else: a **manual** `set_window` (dashboard, API, CLI, a rule) is not a decision, but
  pauses automatic control for the device's `manual_override_s` (`guards.after_manual`).

One decision per device at a time (a lock per device), and a decision within `DEDUPE_S` of the
device's previous one is recorded as `refused` (`one_at_a_time`) and moves nothing: an external
request and the own trigger for the same moment do not move the window twice. The own trigger
is not even checked within `DEDUPE_S` of a decision (with an `interval_s` below it, it waits).

A decision: the features checked (`features.check`, and their age against `stale_after_s`),
the model's proposal and confidence, every guard's verdict (`guards.judge`), then, when the
guards let a move through, a `set_window` through the command service in the device's own
format (the window-control stack gets `window/{id}/control` with the decision's confidence and
`features_used`), whose id starts `ml-` so the loop knows its own commands. The decision row
(`ml_decisions`) holds the trigger, inputs, z-scores, model version, output, verdicts, outcome,
command id and latency; the device's guard state and its last decision's window means
(`ml_devices`) survive a restart.

Which devices: those that sent all three features (seen on the bus since start, or with a stored
configuration). What a device may be told is decided by its configuration: the fleet default
comes from the `ml_mode` setting (`shadow` unless set: decide and record, never actuate).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field

from fieldhub.clock import SYSTEM_CLOCK, US_PER_S, Clock, run_every
from fieldhub.commands.service import CommandService, NewCommand
from fieldhub.errors import FieldhubError
from fieldhub.events.bus import CommandChanged, Committed, EventBus, Subscription
from fieldhub.logs import about
from fieldhub.ml.features import check
from fieldhub.ml.guards import GuardConfig, GuardState, Judgement, after_manual, after_move, judge
from fieldhub.ml.registry import DEFAULT_MODEL_NAME, Registry, install_default
from fieldhub.ml.runtime import WindowModel
from fieldhub.ml.trigger import FEATURES, TriggerParams, evaluate
from fieldhub.ml.windows import WindowMeans, window_means
from fieldhub.protocol.messages import InferenceRequest
from fieldhub.store.base import Store
from fieldhub.store.types import MlDecisionRow, MlDeviceRow, MlTrigger

__all__ = ["DEDUPE_S", "LoopConfig", "MlMode", "WindowLoop"]

log = logging.getLogger("fieldhub.ml")

MlMode = Literal["off", "shadow", "act"]
# A second decision for a device within this of its last one moves nothing (one at a time).
DEDUPE_S = 10.0
# A check whose window lacked a feature is due again after this (or interval_s if shorter).
RETRY_S = 10.0
FEATURE_SET = frozenset(FEATURES)
# How often the timer looks for devices whose own trigger is due.
TICK_S = 5.0
# A device's baseline deviations are read again after this long (from the minute rollups). Only
# a full set is kept: a device with a deviation of 0 or none (a new one, a minute of data) is
# read again at its next check, as the backbone reads them at every check.
STDS_TTL_S = 600.0
# The baseline's bucket: minute means from the rollups (docs/ml.md: why not raw readings), or
# for a baseline shorter than an hour a 60th of it (at least a second), so it has a spread.
BASELINE_BUCKET_US = 60 * US_PER_S
# The loop's own command ids start with this; any other set_window is a manual override.
COMMAND_PREFIX = "ml-"
# Command ids of other set_window commands already taken as a manual override.
MAX_SEEN_COMMANDS = 10_000
# Devices the loop keeps in memory; past this, the one silent longest is forgotten (its stored
# configuration and state stay).
MAX_DEVICES = 100_000
# Decisions started (requests, reading-driven checks) and not yet done; past this a new one is
# dropped, counted: a flood of requests must not grow the event loop's tasks without bound.
MAX_PENDING = 10_000
WINDOW_FORMATS = ("sensor", "native")


class LoopConfig(BaseModel):
    """A device's loop configuration: its guards and its trigger's parameters."""

    model_config = ConfigDict(extra="forbid")

    guards: GuardConfig = Field(default_factory=GuardConfig)
    trigger: TriggerParams = Field(default_factory=TriggerParams)


def default_config(mode: MlMode) -> LoopConfig:
    """The fleet default for `ml_mode`: off, shadow (decide, never actuate) or act."""
    return LoopConfig(guards=GuardConfig(enabled=mode != "off", shadow=mode == "shadow"))


@dataclass(slots=True)
class _Device:
    """What the loop holds for one device."""

    config: LoopConfig
    configured: bool  # a stored configuration (not the fleet default)
    state: GuardState = field(default_factory=GuardState)
    last_means: dict[str, float | None] | None = None
    last_decision_us: int | None = None
    next_check_us: int = 0
    # The features its last check found missing from the window: a reading that brings one
    # checks again at once, whenever the timer's next check is due (the timer may have looked
    # just before the reading arrived).
    missing: frozenset[str] = frozenset()
    checking: bool = False  # its own trigger is running (a reading or the timer started it)
    # The features it has sent since the loop started (its trigger waits for all three: most
    # devices never send a sound level, and a check of theirs could never decide).
    seen: set[str] = field(default_factory=set)
    stds: dict[str, float | None] = field(default_factory=dict)
    stds_us: int | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class WindowLoop:
    """See the module docstring."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        commands: CommandService | None,
        registry: Registry,
        *,
        metrics: CollectorRegistry,
        mode: MlMode = "shadow",
        clock: Clock = SYSTEM_CLOCK,
        model_name: str = DEFAULT_MODEL_NAME,
        tick_s: float = TICK_S,
    ) -> None:
        self._store = store
        self._bus = bus
        self._commands = commands
        self.registry = registry
        self.mode = mode
        self._clock = clock
        self.model_name = model_name
        self.tick_s = tick_s
        self.model: WindowModel | None = None
        self._devices: OrderedDict[str, _Device] = OrderedDict()
        self._seen_commands: OrderedDict[str, None] = OrderedDict()
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self.decisions = Counter(
            "fieldhub_ml_decisions",
            "Window decisions, by what started them and how they ended",
            ["trigger", "outcome"],
            registry=metrics,
        )
        self.refused_inputs = Counter(
            "fieldhub_ml_refused_inputs",
            "Decisions whose inputs were missing, not finite, out of range or stale",
            ["reason"],
            registry=metrics,
        )
        self.dropped = Counter(
            "fieldhub_ml_dropped",
            "Requests and checks dropped because MAX_PENDING decisions were under way, and "
            "devices forgotten past MAX_DEVICES",
            ["what"],
            registry=metrics,
        )
        for what in ("request", "check", "device"):
            self.dropped.labels(what)
        self.checks = Counter(
            "fieldhub_ml_trigger_checks",
            "Own-trigger checks run (a device's window means against its last decision's)",
            registry=metrics,
        )
        self.inference_seconds = Histogram(
            "fieldhub_ml_inference_seconds",
            "One model evaluation",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
            registry=metrics,
        )
        self.decision_seconds = Histogram(
            "fieldhub_ml_decision_seconds",
            "From a decision's start to its command handed to the command service (or its end)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=metrics,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Install the shipped model on a fresh install, load the active one, the devices'
        configurations and states; subscribe to the bus; start the timer."""
        self._subscription = self._bus.subscribe("ml", maxlen=4096)
        installed = await asyncio.to_thread(install_default, self.registry, name=self.model_name)
        if installed is not None:
            log.info("ml: installed the shipped %s model v%d", self.model_name, installed)
        await self.reload_model()
        for row in await self._store.list_ml_devices():
            self._devices[row.device_id] = self._from_row(row)
        self._tasks = [
            asyncio.create_task(self._consume(), name="ml.consumer"),
            asyncio.create_task(
                run_every(self.tick_s, self.tick, log, "ml: a tick"), name="ml.tick"
            ),
        ]
        log.info(
            "ml: window loop in %s mode, model %s, %d configured devices",
            self.mode,
            self._model_label(),
            len(self._devices),
        )

    async def stop(self) -> None:
        """Stop the timer and the bus consumer; let decisions under way finish."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []
        if self._pending:
            await asyncio.wait(list(self._pending))
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    async def wait_idle(self) -> None:
        """Wait until the decisions under way (triggered by readings, requests) are done."""
        while self._pending:
            await asyncio.wait(list(self._pending))

    async def reload_model(self) -> None:
        """Load the registry's active version (after an activation or a rollback). A version
        that does not load leaves the one already loaded serving."""
        try:
            loaded = await asyncio.to_thread(self.registry.load_active, self.model_name)
        except FieldhubError as exc:
            log.error("ml: the active %s model does not load: %s", self.model_name, exc)
            return
        self.model = loaded

    def _model_label(self) -> str:
        if self.model is None:
            return "none"
        return f"{self.model.manifest.name} v{self.model.manifest.version}"

    # -- configuration -------------------------------------------------------------------------

    def config_of(self, device_id: str) -> LoopConfig:
        """A device's configuration (the fleet default when none is stored)."""
        device = self._devices.get(device_id)
        return device.config if device is not None else default_config(self.mode)

    def is_configured(self, device_id: str) -> bool:
        """True when the device has its own stored configuration."""
        device = self._devices.get(device_id)
        return device is not None and device.configured

    def state_of(self, device_id: str) -> GuardState | None:
        """A device's guard state (None: the loop has not seen it)."""
        device = self._devices.get(device_id)
        return None if device is None else device.state

    async def configure(self, device_id: str, config: LoopConfig) -> LoopConfig:
        """Store a device's configuration; it applies from the next decision."""
        device = self._device(device_id)
        async with device.lock:
            device.config = config
            device.configured = True
            await self._save(device_id, device)
        return config

    def _device(self, device_id: str) -> _Device:
        device = self._devices.get(device_id)
        if device is None:
            device = self._devices[device_id] = _Device(
                config=default_config(self.mode), configured=False
            )
            while len(self._devices) > MAX_DEVICES:
                self._devices.popitem(last=False)
                self.dropped.labels("device").inc()
        else:
            self._devices.move_to_end(device_id)
        return device

    def _from_row(self, row: MlDeviceRow) -> _Device:
        try:
            config = LoopConfig.model_validate(row.config)
        except ValueError:
            log.error(
                "ml: device %s has an unreadable configuration; using the default",
                row,
                extra=about(device_id=row.device_id),
            )
            config = default_config(self.mode)
        state_json = dict(row.state)
        last_means = state_json.pop("last_means", None)
        last_decision_us = state_json.pop("last_decision_us", None)
        try:
            state = GuardState.from_json(state_json)
        except (KeyError, TypeError, ValueError):
            state = GuardState()
        return _Device(
            config=config,
            configured=bool(row.config),
            state=state,
            last_means=dict(last_means) if isinstance(last_means, dict) else None,
            last_decision_us=last_decision_us if isinstance(last_decision_us, int) else None,
        )

    async def _save(self, device_id: str, device: _Device) -> None:
        state: dict[str, object] = dict(device.state.to_json())
        state["last_means"] = device.last_means
        state["last_decision_us"] = device.last_decision_us
        await self._store.put_ml_device(
            MlDeviceRow(
                device_id=device_id,
                config=device.config.model_dump(mode="json") if device.configured else {},
                state=state,
                updated_us=self._clock.now_us(),
            )
        )

    # -- what comes in -------------------------------------------------------------------------

    def on_requests(self, requests: list[InferenceRequest], committed_us: int) -> None:
        """Ingest's request listener (on the event loop, after the batch committed)."""
        for request in requests:
            self._spawn(self._answer(request, committed_us), "ml.request")

    async def _answer(self, request: InferenceRequest, committed_us: int) -> None:
        try:
            now = self._clock.now_us()
            age = None if request.at_us is None else max(0.0, (now - request.at_us) / US_PER_S)
            inputs = WindowMeans(dict(request.features), dict.fromkeys(FEATURES, age))
            await self.decide(
                request.device_id,
                trigger="request",
                reason="request",
                inputs=inputs.values,
                ages_s=inputs.ages_s,
                request=dict(request.raw),
                committed_us=committed_us,
            )
        except Exception:
            log.exception(
                "ml: answering %s's request failed",
                request.device_id,
                extra=about(device_id=request.device_id),
            )

    async def _consume(self) -> None:
        assert self._subscription is not None
        subscription = self._subscription
        while True:
            event = await subscription.get()
            try:
                if isinstance(event, Committed):
                    self._on_committed(event)
                elif isinstance(event, CommandChanged):
                    await self._on_command(event)
            except Exception:
                log.exception("ml: handling a bus event failed")

    def _on_committed(self, event: Committed) -> None:
        """A device's features committed: its own trigger runs now if it is due (so a decision
        follows the reading that made it, not the next timer tick)."""
        now = self._clock.now_us()
        devices = self._devices
        for decoded in event.decoded:
            known = devices.get(decoded.device_id)
            if known is not None and len(known.seen) < len(FEATURES):
                # A device short of a feature (most fleets: no sound sensor) stays so unless this
                # message brings one it has not shown: every message of every such device comes
                # here, so this is the loop's hot path (bench/README.md, issue 19). Such a device
                # keeps its place in the LRU of the last message that told it something new.
                seen = known.seen
                for reading in decoded.readings:
                    if reading.metric in FEATURE_SET and reading.metric not in seen:
                        break
                else:
                    continue
            features = {r.metric for r in decoded.readings if r.metric in FEATURE_SET}
            if not features:
                continue
            device = known
            if device is None or len(device.seen) < len(FEATURES):
                device = self._device(decoded.device_id)
                device.seen |= features
                if len(device.seen) < len(FEATURES):
                    continue
            config = device.config
            early = bool(device.missing & features)  # brings what the last check lacked
            due = (device.next_check_us <= now or early) and not device.checking
            if config.guards.enabled and config.trigger.enabled and due:
                device.checking = self._spawn(
                    self._checked(decoded.device_id, event.committed_us), "ml.check"
                )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> bool:
        if len(self._pending) >= MAX_PENDING:
            coro.close()
            self.dropped.labels("request" if name == "ml.request" else "check").inc()
            log.warning("ml: %d decisions under way; %s dropped", len(self._pending), name)
            return False
        task = asyncio.create_task(coro, name=name)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def _checked(self, device_id: str, committed_us: int | None = None) -> None:
        try:
            await self.check(device_id, committed_us=committed_us)
        except Exception:
            log.exception(
                "ml: the trigger of %s failed", device_id, extra=about(device_id=device_id)
            )
        finally:
            self._device(device_id).checking = False

    async def _on_command(self, event: CommandChanged) -> None:
        row = event.command
        if row.name != "set_window" or row.command_id.startswith(COMMAND_PREFIX):
            return
        if row.command_id in self._seen_commands:
            return
        self._seen_commands[row.command_id] = None
        while len(self._seen_commands) > MAX_SEEN_COMMANDS:
            self._seen_commands.popitem(last=False)
        position = row.params.get("position")
        device = self._device(row.device_id)
        async with device.lock:
            now = self._clock.now_us()
            device.state = after_manual(
                device.state,
                round(position) if isinstance(position, int | float) else None,
                now,
                device.config.guards,
            )
            await self._save(row.device_id, device)
        log.info(
            "ml: a manual set_window for %s pauses automatic control for %g s",
            row.device_id,
            device.config.guards.manual_override_s,
            extra=about(device_id=row.device_id, command_id=row.command_id),
        )

    # -- the timer: the own trigger ------------------------------------------------------------

    async def tick(self) -> None:
        """Run the own trigger of every device that is due and sent nothing since (a reading
        runs it at once: `_on_committed`); tests call it with a manual clock."""
        now = self._clock.now_us()
        for device_id, device in list(self._devices.items()):
            config = device.config
            if not (config.guards.enabled and config.trigger.enabled) or device.next_check_us > now:
                continue
            if len(device.seen) == len(FEATURES) and not device.checking:
                device.checking = True
                await self._checked(device_id)

    async def check(
        self, device_id: str, *, committed_us: int | None = None
    ) -> MlDecisionRow | None:
        """The backbone's check for one device now: decide when its trigger says so. The next
        check is due `interval_s` later, or at the next reading while the window lacks a
        feature. `committed_us`: when the reading that ran it was committed (None: the
        timer)."""
        device = self._device(device_id)
        params = device.config.trigger
        now = self._clock.now_us()
        if device.last_decision_us is not None:
            # Within DEDUPE_S of its last decision a firing trigger could only be refused (one
            # at a time): the check waits until it could decide, rather than fill the decision
            # log with refusals when `interval_s` is shorter (an external request is still
            # recorded as refused: it came from outside).
            allowed_us = device.last_decision_us + round(DEDUPE_S * US_PER_S)
            if now < allowed_us:
                device.next_check_us = allowed_us
                return None
        self.checks.inc()
        current = await window_means(self._store, device_id, now, params.window_s)
        device.missing = frozenset(name for name, value in current.values.items() if value is None)
        if device.missing:
            # Not all three features in this window (they come as separate messages, one may be
            # late): a decision now could only refuse its inputs. Looked at again by the next
            # reading that brings a missing one, or by the timer.
            device.next_check_us = now + round(min(params.interval_s, RETRY_S) * US_PER_S)
            return None
        device.next_check_us = now + round(params.interval_s * US_PER_S)
        stds = await self._stds(device_id, device, now, params)
        verdict = evaluate(current.values, device.last_means, stds, params)
        if not verdict.fire:
            return None
        return await self.decide(
            device_id,
            trigger="own",
            reason=verdict.reason,
            inputs=current.values,
            ages_s=current.ages_s,
            zscores=verdict.zscores,
            committed_us=committed_us,
        )

    async def decide_now(self, device_id: str) -> MlDecisionRow:
        """A decision now from the device's current window means, whatever its trigger says
        (an operator's request; the guards still apply)."""
        device = self._device(device_id)
        current = await window_means(
            self._store, device_id, self._clock.now_us(), device.config.trigger.window_s
        )
        return await self.decide(
            device_id,
            trigger="own",
            reason="on_demand",
            inputs=current.values,
            ages_s=current.ages_s,
        )

    async def _stds(
        self, device_id: str, device: _Device, now_us: int, params: TriggerParams
    ) -> dict[str, float | None]:
        if device.stds_us is not None and now_us - device.stds_us < STDS_TTL_S * US_PER_S:
            return device.stds
        stds: dict[str, float | None] = {}
        start = now_us - round(params.baseline_s * US_PER_S)
        for name in FEATURES:
            points = await self._store.query_series(
                device_id,
                name,
                start_us=start,
                end_us=now_us,
                interval_us=min(
                    BASELINE_BUCKET_US, max(US_PER_S, round(params.baseline_s * US_PER_S / 60))
                ),
                agg="avg",
            )
            values = [point.value for point in points]
            stds[name] = _pstdev(values)
        device.stds = stds
        device.stds_us = now_us if all(stds.values()) else None
        return stds

    # -- a decision ----------------------------------------------------------------------------

    async def decide(
        self,
        device_id: str,
        *,
        trigger: MlTrigger,
        reason: str,
        inputs: Mapping[str, float | None],
        ages_s: Mapping[str, float | None],
        zscores: Mapping[str, float | None] | None = None,
        request: dict[str, object] | None = None,
        committed_us: int | None = None,
    ) -> MlDecisionRow:
        """One decision, recorded; see the module docstring. `committed_us`: when the data
        that started it was committed (a reading's or a request's batch)."""
        started = time.perf_counter()
        device = self._device(device_id)
        async with device.lock:
            now = self._clock.now_us()
            values = {name: inputs.get(name) for name in FEATURES}
            row = MlDecisionRow(
                decision_id=str(uuid.uuid4()),
                device_id=device_id,
                at_us=now,
                trigger=trigger,
                reason=reason,
                inputs={"values": values, "ages_s": {k: ages_s.get(k) for k in FEATURES}},
                verdicts=[],
                outcome="error",
                zscores=dict(zscores) if zscores is not None else None,
                request=request,
                committed_us=committed_us,
            )
            if device.last_decision_us is not None and now - device.last_decision_us < round(
                DEDUPE_S * US_PER_S
            ):
                ago = (now - device.last_decision_us) / US_PER_S
                row = replace(
                    row,
                    outcome="refused",
                    verdicts=[
                        {
                            "guard": "one_at_a_time",
                            "ok": False,
                            "detail": f"the device's last decision was {ago:.1f} s ago",
                        }
                    ],
                )
                return await self._record(row, started)
            device.last_decision_us = now
            device.last_means = dict(values)
            config = device.config.guards
            problem = check(values)
            if problem is None:
                stale = [
                    name
                    for name in FEATURES
                    if (age := ages_s.get(name)) is not None and age > config.stale_after_s
                ]
                if stale:
                    problem = f"stale:{stale[0]}"
            if problem is not None:
                self.refused_inputs.labels(problem).inc()
            position = confidence = None
            model = self.model
            if problem is None and model is not None:
                row = replace(
                    row, model_name=model.manifest.name, model_version=model.manifest.version
                )
                inferred = time.perf_counter()
                position, confidence = model.predict(
                    {k: float(v or 0.0) for k, v in values.items()}
                )
                self.inference_seconds.observe(time.perf_counter() - inferred)
            elif problem is None:
                problem = "no_model"
            judgement = judge(
                config,
                device.state,
                proposed=position,
                confidence=confidence,
                inputs_ok=problem is None,
                inputs_reason=problem,
                now_us=now,
            )
            row = replace(
                row,
                position=position,
                confidence=confidence,
                verdicts=judgement.verdicts_json(),
                outcome=judgement.outcome,
            )
            if judgement.target is not None:
                row = await self._actuate(device_id, device, row, judgement, values)
            await self._save(device_id, device)
            return await self._record(row, started)

    async def _actuate(
        self,
        device_id: str,
        device: _Device,
        row: MlDecisionRow,
        judgement: Judgement,
        values: Mapping[str, float | None],
    ) -> MlDecisionRow:
        target = judgement.target
        assert target is not None
        now = self._clock.now_us()
        found = await self._store.get_device(device_id, now_us=now)
        problem: str | None = None
        if found is None:
            problem = "the device is not known"
        elif self._commands is None:
            problem = "no command service"
        if found is None or self._commands is None:
            return self._refused(row, problem or "")
        params: dict[str, object] = {"position": target}
        if found.command_format == "sensor":
            params["confidence"] = round(row.confidence or 1.0, 4)
            params["features_used"] = {k: v for k, v in values.items() if v is not None}
        command_id = f"{COMMAND_PREFIX}{uuid.uuid4()}"
        try:
            sent, _new = await self._commands.submit(
                found, NewCommand(name="set_window", params=params, command_id=command_id)
            )
        except FieldhubError as exc:
            return self._refused(row, f"{exc.code}: {exc.message}"[:300])
        device.state = after_move(device.state, target, now)
        return replace(row, target_position=target, command_id=sent.command_id)

    def _refused(self, row: MlDecisionRow, detail: str) -> MlDecisionRow:
        verdicts = [*row.verdicts, {"guard": "command", "ok": False, "detail": detail}]
        return replace(row, outcome="refused", verdicts=verdicts)

    async def _record(self, row: MlDecisionRow, started: float) -> MlDecisionRow:
        elapsed = time.perf_counter() - started
        row = replace(row, latency_us=round(elapsed * US_PER_S))
        self.decision_seconds.observe(elapsed)
        self.decisions.labels(row.trigger, row.outcome).inc()
        try:
            seq = await self._store.append_ml_decision(row)
        except Exception:
            log.exception(
                "ml: could not store a decision for %s",
                row.device_id,
                extra=about(device_id=row.device_id),
            )
            return row
        return replace(row, seq=seq)

    # -- models --------------------------------------------------------------------------------

    async def activate(self, version: int, *, by: str) -> None:
        """Validate and activate a version of the loop's model, then serve it (Invalid,
        NotFound: the one serving stays)."""
        await asyncio.to_thread(self.registry.activate, self.model_name, version, by=by)
        await self.reload_model()

    async def rollback(self, *, by: str) -> None:
        """Activate the version before the active one, then serve it."""
        await asyncio.to_thread(self.registry.rollback, self.model_name, by=by)
        await self.reload_model()


def _pstdev(values: Sequence[float]) -> float | None:
    """The population standard deviation (the backbone's stddevPop); None without values."""
    if not values:
        return None
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
