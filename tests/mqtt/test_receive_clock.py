"""Receive times: strictly increasing per subscriber (unless the clock is stepped back), and in
the subscriber's clock slot, so ingest workers sharing a subscription never give two messages of
one device the same time."""

from __future__ import annotations

import itertools

import pytest

from fieldhub import clock
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.mqtt.subscriber import CLOCK_STEP_BACK_US, MqttSubscriber


def subscriber(slot: tuple[int, int]) -> MqttSubscriber:
    # Never started: only its clock is used.
    return MqttSubscriber(
        endpoint=parse_mqtt_url("mqtt://127.0.0.1:1"),
        client_id=f"clock-{slot[0]}-{slot[1]}",
        filters=["devices/#"],
        on_message=lambda message, token: None,
        clock_slot=slot,
    )


@pytest.mark.parametrize("slot", [(0, 1), (0, 3), (1, 3), (2, 3), (4, 7)])
def test_times_increase_and_stay_in_their_slot(slot: tuple[int, int]) -> None:
    sub = subscriber(slot)
    # Far more calls than microseconds pass: most take the "previous + 1" path.
    times = [sub._received_us() for _ in range(20_000)]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert {t % slot[1] for t in times} == {slot[0]}


def test_workers_of_one_run_never_share_a_time() -> None:
    subs = [subscriber((k, 3)) for k in range(3)]
    seen: set[int] = set()
    for _ in range(5_000):
        for sub in subs:
            t = sub._received_us()
            assert t not in seen
            seen.add(t)


@pytest.mark.parametrize("slot", [(3, 3), (-1, 2), (0, 0)])
def test_a_slot_outside_its_range_is_refused(slot: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="clock slot"):
        subscriber(slot)


def test_times_follow_the_clock_stepped_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step back of an hour: the next time is the clock's again, not the old one plus 1 µs
    (which would stamp the next hour's messages without a device time with one instant); a step
    back within the tolerance keeps the times increasing."""
    now = [1_800_000_000_000_000]
    monkeypatch.setattr(clock, "now_us", lambda: now[0])
    sub = subscriber((0, 1))
    before = sub._received_us()
    now[0] -= CLOCK_STEP_BACK_US // 2
    assert sub._received_us() == before + 1
    now[0] -= 3_600_000_000
    assert sub._received_us() == now[0]
    now[0] += 10
    assert sub._received_us() == now[0]
