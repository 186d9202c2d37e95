"""Run a fleet of simulated devices: `fieldhub sim` and `fieldhub up --demo`.

This is for demos and functional tests, not for load tests. Threads: one scheduler thread drives
every device's publishes; each native device keeps one MQTT client with its own network thread,
and each readings gateway has one only while its short connection is open; a small pool drops
connections that could not be dropped from their own network thread. That is fine up to about a
hundred devices. To measure fieldhub under load use `bench/` (`python -m bench.loadgen`), which
speaks MQTT itself so the generator does not measure its own client library.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeAlias

from fieldhub.mqtt import MqttEndpoint
from fieldhub.sim.native import NativeDevice
from fieldhub.sim.payloads import mac_for_index
from fieldhub.sim.readings import ReadingsGateway
from fieldhub.sim.stats import PublishCounter, SimStats

logger = logging.getLogger("fieldhub.sim")

SimProfile: TypeAlias = Literal["native", "readings", "mixed"]
SIM_PROFILES: tuple[SimProfile, ...] = ("native", "readings", "mixed")
Device: TypeAlias = NativeDevice | ReadingsGateway

# Native device ids: `sim-0001`, `sim-0002`, ... (sorted by name = sorted by number up to 9,999).
NATIVE_ID_FORMAT = "sim-{:04d}"
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


def _kinds(profile: SimProfile, devices: int) -> list[Literal["native", "readings"]]:
    if profile == "mixed":
        # Alternate, so any prefix of the fleet (and a small demo) has both kinds.
        return ["native" if index % 2 == 0 else "readings" for index in range(devices)]
    return [profile] * devices


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
) -> list[Device]:
    boot_rng = random.Random(seed)
    fleet: list[Device] = []
    natives = gateways = 0
    for index, kind in enumerate(_kinds(profile, devices)):
        device_seed = seed * DEVICE_SEED_STRIDE + index
        if kind == "native":
            natives += 1
            fleet.append(
                NativeDevice(
                    endpoint=endpoint,
                    device_id=NATIVE_ID_FORMAT.format(natives),
                    seed=device_seed,
                    counter=counter,
                )
            )
        else:
            gateways += 1
            fleet.append(
                ReadingsGateway(
                    endpoint=endpoint,
                    mac=mac_for_index(gateways),
                    period_s=period_s,
                    publish_temperature=readings_temperature,
                    seed=device_seed,
                    uptime_offset_ms=boot_rng.randrange(MAX_BOOT_AGE_MS),
                    counter=counter,
                    teardown=teardown,
                )
            )
    return fleet


def _counts(stats: SimStats) -> str:
    return (
        f"sent {stats.sent}, acked {stats.acked}, failed {stats.failed}, "
        f"skipped {stats.skipped}, in flight {stats.in_flight}"
    )


def _wait_connected(
    natives: Sequence[NativeDevice],
    stop: threading.Event,
    end_s: float,
    emit: Callable[[str], None],
) -> None:
    deadline_s = min(time.monotonic() + CONNECT_WAIT_S, end_s)
    while not stop.is_set() and time.monotonic() < deadline_s:
        if all(device.connected for device in natives):
            return
        stop.wait(SCHEDULER_MAX_SLEEP_S)
    connected = sum(device.connected for device in natives)
    if connected < len(natives) and not stop.is_set():
        emit(
            f"sim: only {connected} of {len(natives)} native devices connected within "
            f"{CONNECT_WAIT_S:g} s; starting anyway (messages of offline devices are skipped)"
        )


def _shutdown(natives: Sequence[NativeDevice], gateways: Sequence[ReadingsGateway]) -> None:
    """Graceful end: readings cycles finish, native devices say `offline` and disconnect."""
    now_s = time.monotonic()
    deadline_s = now_s + SHUTDOWN_DRAIN_S
    grace_s = now_s + SHUTDOWN_CONNECT_GRACE_S
    offline = [future for device in natives if (future := device.announce_offline()) is not None]
    while now_s < deadline_s and (
        any(not future.done() for future in offline)
        or any(device.unacked for device in natives)
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
    if not natives:
        return
    # Closing a client that is waiting to reconnect takes up to a second (see NativeDevice.crash),
    # so close them side by side rather than one after another.
    with ThreadPoolExecutor(
        max_workers=min(CLOSE_WORKERS, len(natives)), thread_name_prefix="fieldhub-sim-close"
    ) as closer:
        for future in [closer.submit(device.close) for device in natives]:
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
) -> SimStats:
    """Run a simulated fleet until `stop` is set or `duration_s` passes; return what it did.

    `rate_hz` is messages per second per device: a native device publishes telemetry every
    1/rate s on its one connection, a readings gateway opens a fresh connection every 1/rate s
    (the firmware's 30 s is rate 1/30). Devices are spread evenly over one period so they never
    publish in lockstep. `mixed` alternates native devices (`sim-0001`, ...) and readings gateways
    (`3C:E9:0E:00:00:01`, ...). `readings_temperature` makes gateways also publish
    `/readings/temperature/{MAC}`. A progress line goes to `log` (default: the `fieldhub.sim`
    logger at INFO) every `STATS_LOG_INTERVAL_S`.
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
            profile=profile,
            devices=devices,
            period_s=period_s,
            seed=seed,
            counter=counter,
            teardown=teardown,
            readings_temperature=readings_temperature,
        )
        natives = [device for device in fleet if isinstance(device, NativeDevice)]
        gateways = [device for device in fleet if isinstance(device, ReadingsGateway)]
        emit(
            f"sim: {len(natives)} native devices and {len(gateways)} readings gateways "
            f"-> {endpoint.url}, {rate_hz:g} msg/s each"
        )
        try:
            for device in natives:
                device.start()
            _wait_connected(natives, stop, end_s, emit)
            _schedule(
                fleet=fleet,
                natives=natives,
                gateways=gateways,
                period_s=period_s,
                end_s=end_s,
                stop=stop,
                counter=counter,
                emit=emit,
            )
        finally:
            _shutdown(natives, gateways)
    stats = counter.snapshot()
    emit(f"sim: stopped after {time.monotonic() - started_s:.0f} s: {_counts(stats)}")
    return stats


def _schedule(
    *,
    fleet: Sequence[Device],
    natives: Sequence[NativeDevice],
    gateways: Sequence[ReadingsGateway],
    period_s: float,
    end_s: float,
    stop: threading.Event,
    counter: PublishCounter,
    emit: Callable[[str], None],
) -> None:
    """The scheduler loop: one heap of (due time, device) for the whole fleet, until `end_s`."""
    start_s = time.monotonic()
    # Device i first fires i/n of a period in: an even spread, so n devices at rate r give a
    # steady n*r msg/s instead of n-message bursts.
    due: list[tuple[float, int]] = [
        (start_s + period_s * index / len(fleet), index) for index in range(len(fleet))
    ]
    heapq.heapify(due)
    next_log_s = start_s + STATS_LOG_INTERVAL_S
    while not stop.is_set():
        now_s = time.monotonic()
        if now_s >= end_s:
            return
        while due[0][0] <= now_s:
            due_s, index = heapq.heappop(due)
            device = fleet[index]
            if isinstance(device, NativeDevice):
                device.publish_telemetry()
            elif not device.begin_cycle():
                # The previous connection is still open: the firmware would not start another.
                counter.skip()
            # Behind by whole periods (a stalled host): skip those slots instead of bursting to
            # catch up, as a device whose loop overran would.
            missed = int((now_s - due_s) // period_s)
            if missed:
                counter.skip(missed)
            heapq.heappush(due, (due_s + (missed + 1) * period_s, index))
        for native in natives:
            native.maintain()
        for gateway in gateways:
            gateway.expire(now_s)
        if now_s >= next_log_s:
            elapsed_s = now_s - start_s
            emit(f"sim: {elapsed_s:.0f} s, {len(fleet)} devices: {_counts(counter.snapshot())}")
            next_log_s += STATS_LOG_INTERVAL_S
        wake_s = min(due[0][0], next_log_s, end_s, now_s + SCHEDULER_MAX_SLEEP_S)
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
