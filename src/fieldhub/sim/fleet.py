"""Run a fleet of simulated devices: `fieldhub sim` and `fieldhub up --demo`.

This is for demos and functional tests, not for load tests. Threads: one scheduler thread drives
every device's publishes; each native device and each legacy-stack node (fastapi, iot-node,
sensor) keeps one MQTT client with its own network thread, and each readings gateway has one only
while its short connection is open; a small pool drops connections that could not be dropped
from their own network thread. That is fine up to about a hundred devices.

Periods: `rate_hz` sets the period of the native devices and of the readings gateways (whose
firmware period, 30 s, is rate 1/30: the existing demo and tests run them faster). The fastapi,
iot-node and sensor kinds always run at their firmware's own periods (1 s data and 3 s
heartbeat, both on the fastapi node's data topic; 10 s telemetry and 30 s status; a 10 s
reading cycle): their timing is part of the contract being reproduced (a heartbeat three times
slower than the data), and 1-10 s is already demo speed. To measure fieldhub under load use
`bench/` (`python -m bench.loadgen`), which speaks MQTT itself so the generator does not measure
its own client library.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

from fieldhub.broker.legacy import FASTAPI_FIRMWARE_PASSWORD, FASTAPI_FIRMWARE_USERNAME
from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.sim.fastapi_node import FASTAPI_BOOT_S, FASTAPI_MAC_INDEX_BASE, FastApiNode
from fieldhub.sim.iot_node import IotNode, iot_node_topic_id
from fieldhub.sim.link import LinkedDevice
from fieldhub.sim.native import NativeDevice
from fieldhub.sim.payloads import mac_for_index
from fieldhub.sim.readings import ReadingsGateway
from fieldhub.sim.stats import PublishCounter, SimStats
from fieldhub.sim.window_sensor import WindowSensor, window_sensor_id

logger = logging.getLogger("fieldhub.sim")

DeviceKind: TypeAlias = Literal["native", "readings", "fastapi", "iot-node", "sensor"]
SimProfile: TypeAlias = Literal["native", "readings", "fastapi", "iot-node", "sensor", "mixed"]
# In this order `mixed` cycles through them, so any prefix of five devices has one of each.
DEVICE_KINDS: tuple[DeviceKind, ...] = ("native", "readings", "fastapi", "iot-node", "sensor")
SIM_PROFILES: tuple[SimProfile, ...] = (*DEVICE_KINDS, "mixed")
Device: TypeAlias = NativeDevice | ReadingsGateway | LinkedDevice
# Devices that keep one connection for their whole life (all but the readings gateways).
Persistent: TypeAlias = NativeDevice | LinkedDevice

# Native device ids: `sim-0001`, `sim-0002`, ... (sorted by name = sorted by number up to 9,999).
NATIVE_ID_FORMAT = "sim-{:04d}"
# A legacy-stack node's jobs first fire spread over this long (or its period, if shorter), not
# over a whole period: a 30 s status period would otherwise keep a demo's last node silent for
# half a minute.
LEGACY_FIRST_SPREAD_S = 1.0
# Above this the thread count (one network thread per native device) starts to cost more than a
# demo should; we warn rather than refuse, and point at bench/.
RECOMMENDED_MAX_DEVICES = 100
# A device above this rate is a load test, not a demo; bench/ is the tool for that.
MAX_RATE_HZ = 100.0
# The scheduler wakes at least this often even when nothing is due, to re-announce `online` after
# a native device reconnected and to abandon readings cycles past their deadline. 50 ms costs
# nothing measurable at 100 devices and keeps a stale `offline` short.
SCHEDULER_MAX_SLEEP_S = 0.05
# One progress line per this many seconds: often enough to see a demo is alive, rarely enough to
# keep a terminal readable.
STATS_LOG_INTERVAL_S = 5.0
# Before the first publish, wait this long for native devices to connect, so the first round is
# not skipped just because the TCP handshakes were still in flight.
CONNECT_WAIT_S = 5.0
# On stop: how long to wait for open readings cycles, the final `offline` publishes and in-flight
# telemetry to be acknowledged before dropping what is left (counted as failed).
SHUTDOWN_DRAIN_S = 5.0
# Within the drain time, a readings cycle still waiting for its connection after this long is
# dropped at once: a handshake on a live broker takes milliseconds, so this only cuts short the
# wait for a broker that is down.
SHUTDOWN_CONNECT_GRACE_S = 1.0
# Workers that drop readings connections from outside their network thread (an abandoned cycle
# takes up to ~1 s). At most one job per gateway is queued, so the queue is bounded by the fleet.
TEARDOWN_WORKERS = 4
# Native clients closed side by side on stop: a client that cannot reach the broker takes up to a
# second to close, so 100 unreachable devices close in ~3 s instead of ~100 s.
CLOSE_WORKERS = 32
# Simulated gateways start as if they had booted up to this long ago, so their uptime timestamps
# differ like a real fleet's (the firmware's logs show 93 s and 30 min).
MAX_BOOT_AGE_MS = 3_600_000
# Per-device seeds: seed * stride + device number, so fleets with seeds 0 and 1 never share a
# device's random stream below this many devices.
DEVICE_SEED_STRIDE = 1_000_003


def _kinds(profile: SimProfile, devices: int) -> list[DeviceKind]:
    if profile == "mixed":
        # Cycle, so any prefix of five devices (and a small demo) has one of each kind.
        return [DEVICE_KINDS[index % len(DEVICE_KINDS)] for index in range(devices)]
    return [profile] * devices


def native_count(profile: SimProfile, devices: int) -> int:
    """How many of the fleet's devices are native (numbered from 1, `NATIVE_ID_FORMAT`)."""
    return sum(1 for kind in _kinds(profile, devices) if kind == "native")


def _check_args(profile: str, devices: int, rate_hz: float, duration_s: float | None) -> None:
    if profile not in SIM_PROFILES:
        raise ValueError(f"profile {profile!r} is not one of {', '.join(SIM_PROFILES)}")
    if devices < 1:
        raise ValueError(f"need at least one device, got {devices}")
    if not 0 < rate_hz <= MAX_RATE_HZ:
        raise ValueError(
            f"rate must be > 0 and <= {MAX_RATE_HZ:g} messages/s per device, got {rate_hz}; "
            "for load tests use bench/"
        )
    if duration_s is not None and duration_s <= 0:
        raise ValueError(f"duration must be > 0 s, got {duration_s}")


def _build_fleet(
    *,
    endpoint: MqttEndpoint,
    profile: SimProfile,
    devices: int,
    period_s: float,
    seed: int,
    counter: PublishCounter,
    teardown: ThreadPoolExecutor,
    readings_temperature: bool,
    legacy_endpoint: MqttEndpoint | None = None,
    logins: Mapping[str, tuple[str, str]] | None = None,
) -> list[Device]:
    boot_rng = random.Random(seed)
    fleet: list[Device] = []
    # On fieldhub's legacy listener the FastAPI firmware logs in with its compiled-in login,
    # which the listener's policy admits it by; elsewhere it uses what the endpoint carries.
    fastapi_endpoint = legacy_endpoint = legacy_endpoint or endpoint
    logins = logins or {}
    if legacy_endpoint is not endpoint and legacy_endpoint.username is None:
        fastapi_endpoint = replace(
            legacy_endpoint,
            username=FASTAPI_FIRMWARE_USERNAME,
            password=FASTAPI_FIRMWARE_PASSWORD,
        )
    # Each kind numbers its own devices from 1; the id schemes differ per kind, so ids never
    # collide across kinds (fastapi MACs start at FASTAPI_MAC_INDEX_BASE, gateways' at 1).
    numbers = dict.fromkeys(DEVICE_KINDS, 0)
    for index, kind in enumerate(_kinds(profile, devices)):
        device_seed = seed * DEVICE_SEED_STRIDE + index
        numbers[kind] += 1
        number = numbers[kind]
        device: Device
        if kind == "native":
            device_id = NATIVE_ID_FORMAT.format(number)
            login = logins.get(device_id)
            device = NativeDevice(
                endpoint=endpoint
                if login is None
                else replace(endpoint, username=login[0], password=login[1]),
                device_id=device_id,
                seed=device_seed,
                counter=counter,
            )
        elif kind == "readings":
            device = ReadingsGateway(
                endpoint=legacy_endpoint,
                mac=mac_for_index(number),
                period_s=period_s,
                publish_temperature=readings_temperature,
                seed=device_seed,
                uptime_offset_ms=boot_rng.randrange(MAX_BOOT_AGE_MS),
                counter=counter,
                teardown=teardown,
            )
        elif kind == "fastapi":
            # Connects as its sketch does at the end of setup(): booted FASTAPI_BOOT_S ago
            # (WiFi and the 2 s NTP wait), so its first status message already has a date.
            device = FastApiNode(
                endpoint=fastapi_endpoint,
                mac=mac_for_index(FASTAPI_MAC_INDEX_BASE + number),
                seed=device_seed,
                counter=counter,
                uptime_offset_ms=round(FASTAPI_BOOT_S * 1000),
            )
        elif kind == "iot-node":
            device = IotNode(
                endpoint=legacy_endpoint,
                topic_id=iot_node_topic_id(number),
                seed=device_seed,
                counter=counter,
                uptime_offset_ms=random.Random(device_seed).randrange(MAX_BOOT_AGE_MS),
            )
        else:
            device = WindowSensor(
                endpoint=legacy_endpoint,
                device_id=window_sensor_id(number),
                seed=device_seed,
                counter=counter,
            )
        fleet.append(device)
    return fleet


@dataclass(frozen=True, slots=True)
class _Job:
    """One periodic action of one device, as the scheduler sees it."""

    period_s: float
    first_s: float
    # Publishes (or skips, counting the skip itself); the result is not used.
    fire: Callable[[], object]


def _jobs(fleet: Sequence[Device], period_s: float, counter: PublishCounter) -> list[_Job]:
    """Every device's periodic actions, with first times spread evenly over the fleet."""
    jobs: list[_Job] = []
    for index, device in enumerate(fleet):
        # Device i first fires i/n of a period in: an even spread, so n devices at rate r give a
        # steady n*r msg/s instead of n-message bursts.
        fraction = index / len(fleet)
        if isinstance(device, NativeDevice):
            jobs.append(_Job(period_s, fraction * period_s, device.publish_telemetry))
        elif isinstance(device, ReadingsGateway):
            jobs.append(_Job(period_s, fraction * period_s, _fire_gateway(device, counter)))
        else:
            for periodic in device.periodic():
                offset_s = fraction * min(periodic.period_s, LEGACY_FIRST_SPREAD_S)
                if periodic.on_connect_too:
                    offset_s += periodic.period_s
                jobs.append(_Job(periodic.period_s, offset_s, periodic.fire))
    return jobs


def _fire_gateway(gateway: ReadingsGateway, counter: PublishCounter) -> Callable[[], None]:
    def fire() -> None:
        if not gateway.begin_cycle():
            # The previous connection is still open: the firmware would not start another.
            counter.skip()

    return fire


def _counts(stats: SimStats) -> str:
    return (
        f"sent {stats.sent}, acked {stats.acked}, failed {stats.failed}, "
        f"skipped {stats.skipped}, in flight {stats.in_flight}"
    )


def _describe(fleet: Sequence[Device]) -> str:
    """`2 native, 1 readings, ...` in DEVICE_KINDS order, kinds with no device left out."""
    counts = dict.fromkeys(DEVICE_KINDS, 0)
    for device in fleet:
        if isinstance(device, NativeDevice):
            counts["native"] += 1
        elif isinstance(device, ReadingsGateway):
            counts["readings"] += 1
        else:
            counts[_linked_kind(device)] += 1
    return ", ".join(f"{count} {kind}" for kind, count in counts.items() if count)


def _linked_kind(device: LinkedDevice) -> DeviceKind:
    if isinstance(device, FastApiNode):
        return "fastapi"
    if isinstance(device, IotNode):
        return "iot-node"
    return "sensor"


def _wait_connected(
    persistent: Sequence[Persistent],
    stop: threading.Event,
    end_s: float,
    emit: Callable[[str], None],
) -> None:
    deadline_s = min(time.monotonic() + CONNECT_WAIT_S, end_s)
    while not stop.is_set() and time.monotonic() < deadline_s:
        if all(device.connected for device in persistent):
            return
        stop.wait(SCHEDULER_MAX_SLEEP_S)
    connected = sum(device.connected for device in persistent)
    if connected < len(persistent) and not stop.is_set():
        natives_only = all(isinstance(device, NativeDevice) for device in persistent)
        what = "native devices" if natives_only else "always-connected devices"
        emit(
            f"sim: only {connected} of {len(persistent)} {what} connected within "
            f"{CONNECT_WAIT_S:g} s; starting anyway (messages of offline devices are skipped)"
        )


def _shutdown(persistent: Sequence[Persistent], gateways: Sequence[ReadingsGateway]) -> None:
    """Graceful end: readings cycles finish, connected devices say `offline` and disconnect."""
    now_s = time.monotonic()
    deadline_s = now_s + SHUTDOWN_DRAIN_S
    grace_s = now_s + SHUTDOWN_CONNECT_GRACE_S
    offline = [future for device in persistent if (future := device.announce_offline()) is not None]
    while now_s < deadline_s and (
        any(not future.done() for future in offline)
        or any(device.unacked for device in persistent)
        or any(gateway.busy for gateway in gateways)
    ):
        if now_s >= grace_s:
            # A cycle that has not even connected by now will not be acked before the deadline
            # (the broker is down or refusing us): drop it instead of waiting the deadline out.
            for gateway in gateways:
                if not gateway.connected:
                    gateway.abandon()
        time.sleep(SCHEDULER_MAX_SLEEP_S)
        now_s = time.monotonic()
    for gateway in gateways:
        gateway.abandon()
    if not persistent:
        return
    # Closing a client that is waiting to reconnect takes up to a second (see NativeDevice.crash),
    # so close them side by side rather than one after another.
    with ThreadPoolExecutor(
        max_workers=min(CLOSE_WORKERS, len(persistent)), thread_name_prefix="fieldhub-sim-close"
    ) as closer:
        for future in [closer.submit(device.close) for device in persistent]:
            future.result()


def run_sim(
    *,
    endpoint: MqttEndpoint,
    profile: SimProfile,
    devices: int,
    rate_hz: float,
    duration_s: float | None,
    stop: threading.Event,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    readings_temperature: bool = False,
    logins: Mapping[str, tuple[str, str]] | None = None,
    legacy_endpoint: MqttEndpoint | None = None,
) -> SimStats:
    """Run a simulated fleet until `stop` is set or `duration_s` passes; return what it did.

    `rate_hz` is messages per second per native device and per readings gateway: a native device
    publishes telemetry every 1/rate s on its one connection, a readings gateway opens a fresh
    connection every 1/rate s (the firmware's 30 s is rate 1/30). The fastapi, iot-node and
    sensor kinds keep their firmware's own periods whatever the rate (see the module docstring).
    Devices are spread evenly over one period so they never publish in lockstep. `mixed` cycles
    native devices (`sim-0001`, ...), readings gateways (`3C:E9:0E:00:00:01`, ...), fastapi nodes
    (`3CE90E100001`, ...), iot-nodes (`01`, ...) and window sensors (`window-01`, ...).
    `readings_temperature` makes gateways also publish `/readings/temperature/{MAC}`. A progress
    line goes to `log` (default: the `fieldhub.sim` logger at INFO) every `STATS_LOG_INTERVAL_S`.
    `logins` maps native device ids to the (username, password) fieldhub issued them (a broker
    with authentication); the legacy kinds connect to `legacy_endpoint` (default `endpoint`), as
    fleets of the earlier stacks connect to fieldhub's legacy listener.
    """
    _check_args(profile, devices, rate_hz, duration_s)
    emit = log if log is not None else logger.info
    if devices > RECOMMENDED_MAX_DEVICES:
        emit(
            f"sim: {devices} devices is more than the ~{RECOMMENDED_MAX_DEVICES} this simulator "
            "is meant for (one thread per device); for load tests use bench/loadgen.py"
        )
    period_s = 1.0 / rate_hz
    counter = PublishCounter()
    started_s = time.monotonic()
    end_s = started_s + duration_s if duration_s is not None else float("inf")
    with ThreadPoolExecutor(
        max_workers=TEARDOWN_WORKERS, thread_name_prefix="fieldhub-sim-teardown"
    ) as teardown:
        fleet = _build_fleet(
            endpoint=endpoint,
            legacy_endpoint=legacy_endpoint,
            logins=logins,
            profile=profile,
            devices=devices,
            period_s=period_s,
            seed=seed,
            counter=counter,
            teardown=teardown,
            readings_temperature=readings_temperature,
        )
        persistent = [device for device in fleet if not isinstance(device, ReadingsGateway)]
        gateways = [device for device in fleet if isinstance(device, ReadingsGateway)]
        emit(
            f"sim: {_describe(fleet)} -> {endpoint.url}; native and readings at {rate_hz:g} "
            "msg/s each, other kinds at their firmware's periods"
        )
        try:
            for device in persistent:
                device.start()
            _wait_connected(persistent, stop, end_s, emit)
            _schedule(
                fleet=fleet,
                jobs=_jobs(fleet, period_s, counter),
                persistent=persistent,
                gateways=gateways,
                end_s=end_s,
                stop=stop,
                counter=counter,
                emit=emit,
            )
        finally:
            _shutdown(persistent, gateways)
    stats = counter.snapshot()
    emit(f"sim: stopped after {time.monotonic() - started_s:.0f} s: {_counts(stats)}")
    return stats


def _schedule(
    *,
    fleet: Sequence[Device],
    jobs: Sequence[_Job],
    persistent: Sequence[Persistent],
    gateways: Sequence[ReadingsGateway],
    end_s: float,
    stop: threading.Event,
    counter: PublishCounter,
    emit: Callable[[str], None],
) -> None:
    """The scheduler loop: one heap of (due time, job) for the whole fleet, until `end_s`."""
    start_s = time.monotonic()
    due = [(start_s + job.first_s, index) for index, job in enumerate(jobs)]
    heapq.heapify(due)
    next_log_s = start_s + STATS_LOG_INTERVAL_S
    while not stop.is_set():
        now_s = time.monotonic()
        if now_s >= end_s:
            return
        while due and due[0][0] <= now_s:
            due_s, index = heapq.heappop(due)
            job = jobs[index]
            job.fire()
            # Behind by whole periods (a stalled host): skip those slots instead of bursting to
            # catch up, as a device whose loop overran would.
            missed = int((now_s - due_s) // job.period_s)
            if missed:
                counter.skip(missed)
            heapq.heappush(due, (due_s + (missed + 1) * job.period_s, index))
        for device in persistent:
            device.maintain()
        for gateway in gateways:
            gateway.expire(now_s)
        if now_s >= next_log_s:
            elapsed_s = now_s - start_s
            emit(f"sim: {elapsed_s:.0f} s, {len(fleet)} devices: {_counts(counter.snapshot())}")
            next_log_s += STATS_LOG_INTERVAL_S
        next_due_s = due[0][0] if due else end_s
        wake_s = min(next_due_s, next_log_s, end_s, now_s + SCHEDULER_MAX_SLEEP_S)
        stop.wait(max(0.0, wake_s - time.monotonic()))


def start_sim_in_background(
    *,
    endpoint: MqttEndpoint,
    profile: SimProfile,
    devices: int,
    rate_hz: float,
    duration_s: float | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    readings_temperature: bool = False,
) -> tuple[threading.Thread, threading.Event]:
    """Start `run_sim` in a daemon thread (for `fieldhub up --demo`); returns it and its stop.

    Set the event and join the thread to stop the fleet gracefully (native devices publish
    `offline`). Arguments are checked here, so a bad one raises in the caller, not in the thread.
    """
    _check_args(profile, devices, rate_hz, duration_s)
    stop = threading.Event()

    def target() -> None:
        try:
            run_sim(
                endpoint=endpoint,
                profile=profile,
                devices=devices,
                rate_hz=rate_hz,
                duration_s=duration_s,
                stop=stop,
                seed=seed,
                log=log,
                readings_temperature=readings_temperature,
            )
        except Exception:
            # A daemon thread's exception would otherwise reach only stderr, through threading's
            # hook, without saying which part of the app died; the app itself keeps running.
            logger.exception("simulated fleet stopped with an error")

    thread = threading.Thread(target=target, name="fieldhub-sim", daemon=True)
    thread.start()
    return thread, stop
