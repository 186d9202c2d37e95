"""Fleet argument checks and layout, without a broker."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.sim import run_sim, start_sim_in_background
from fieldhub.sim.fleet import _kinds

# Nothing listens here; every case below must fail before connecting.
NOWHERE = MqttEndpoint(host="127.0.0.1", port=9)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"profile": "thingsboard"}, "profile"),
        ({"devices": 0}, "at least one device"),
        ({"rate_hz": 0.0}, "rate"),
        ({"rate_hz": 1_000.0}, "bench/"),
        ({"duration_s": 0.0}, "duration"),
    ],
)
def test_run_sim_refuses_bad_arguments(overrides: dict[str, Any], message: str) -> None:
    """Bad profile, device count, rate or duration raise ValueError naming the problem."""
    args: dict[str, Any] = {
        "endpoint": NOWHERE,
        "profile": "native",
        "devices": 1,
        "rate_hz": 1.0,
        "duration_s": 1.0,
    }
    args.update(overrides)
    with pytest.raises(ValueError, match=message):
        run_sim(stop=threading.Event(), **args)
    duration = args.pop("duration_s")
    with pytest.raises(ValueError, match=message):
        start_sim_in_background(duration_s=duration, **args)


def test_mixed_fleet_cycles_through_every_kind() -> None:
    """`mixed` cycles through the kinds, so even a small demo has one of each."""
    assert _kinds("mixed", 6) == ["native", "readings", "fastapi", "iot-node", "sensor", "native"]
    assert _kinds("readings", 2) == ["readings", "readings"]
