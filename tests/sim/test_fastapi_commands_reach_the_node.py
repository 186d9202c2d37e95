"""Every command fieldhub sends a FastAPI/RabbitMQ-stack node, encoded by the `fastapi` command
format, is executed by the firmware's handler (`mqttCallback()`, reimplemented in the simulated
node): none is an "Unknown action", and each changes what the .ino says it changes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from fieldhub.commands.formats import FASTAPI, Outgoing
from fieldhub.sim.fastapi_node import (
    Actuators,
    FastApiState,
    PublishStatus,
    Restart,
    UpdateFirmware,
    handle_command,
)

NODE = "3CE90E72124C"
NOW_S = 1_767_225_600  # 2026-01-01: the node's clock is set (NTP)
DEFAULT = FastApiState()

# (command, params, the node's state after it, the effects it must have)
CASES: list[tuple[str, dict[str, Any], FastApiState, tuple[type, ...]]] = [
    (
        "SERVO_ANGLE",
        {"angle": 135},
        replace(DEFAULT, actuators=replace(DEFAULT.actuators, servo_angle=135)),
        (PublishStatus,),
    ),
    (
        "SERVO_CONTROL",
        {"angle": 10},
        replace(DEFAULT, actuators=replace(DEFAULT.actuators, servo_angle=10)),
        (PublishStatus,),
    ),
    (
        "LIGHT_CONTROL",
        {"state": True},
        replace(DEFAULT, actuators=Actuators(light_state=True)),
        (PublishStatus,),
    ),
    (
        "FAN_CONTROL",
        {"state": True},
        replace(DEFAULT, actuators=Actuators(fan_state=True)),
        (PublishStatus,),
    ),
    (
        "RELAY_CONTROL",
        {"relay": 4, "state": True},
        replace(DEFAULT, actuators=Actuators(relay4_state=True)),
        (PublishStatus,),
    ),
    (
        "REAL_MODEL_CONTROL",
        {"state": True},
        replace(DEFAULT, actuators=Actuators(real_model_state=True)),
        (PublishStatus,),
    ),
    ("SMART_MODE", {"enabled": False}, replace(DEFAULT, smart_mode=False), ()),
    (
        "SET_LIGHT_SCHEDULE",
        {"on_hour": 7, "off_hour": 22},
        replace(DEFAULT, light_on_hour=7, light_off_hour=22),
        (),
    ),
    ("REBOOT", {}, DEFAULT, (PublishStatus, Restart)),
    ("STATUS_REQUEST", {}, DEFAULT, (PublishStatus,)),
    (
        "FIRMWARE_UPDATE",
        {"url": "http://fw.local/node.bin"},
        DEFAULT,
        (PublishStatus, UpdateFirmware),
    ),
]


def test_the_cases_cover_every_command_fieldhub_offers() -> None:
    """The table below is the format's whole catalogue (the ten actions, SERVO_* twice)."""
    assert {name for name, _, _, _ in CASES} == set(FASTAPI.commands)


@pytest.mark.parametrize(("name", "params", "after", "effects"), CASES, ids=[c[0] for c in CASES])
def test_a_command_fieldhub_sends_is_executed_by_the_node(
    name: str, params: dict[str, Any], after: FastApiState, effects: tuple[type, ...]
) -> None:
    """Validated and encoded by fieldhub, handled by the firmware's logic: acted on, as named."""
    FASTAPI.validate(name, params)
    payload = FASTAPI.encode(
        Outgoing(command_id="c-1", name=name, params=params, topic_id=NODE, at_us=NOW_S * 10**6)
    )
    handled = handle_command(DEFAULT, f"devices/{NODE}/commands", payload, device_time_s=NOW_S)
    assert handled.ignored is None
    assert handled.action == name
    assert handled.state == after
    assert tuple(type(effect) for effect in handled.effects) == effects


def test_a_fallback_copy_is_executed_when_fresh_and_ignored_when_old() -> None:
    """On `commands/last` the node runs a command stamped within 5 minutes, not an older one."""
    payload = FASTAPI.encode(
        Outgoing(
            command_id="c-2",
            name="LIGHT_CONTROL",
            params={"state": True},
            topic_id=NODE,
            at_us=(NOW_S - 60) * 10**6,
        )
    )
    last = f"devices/{NODE}/commands/last"
    assert handle_command(DEFAULT, last, payload, device_time_s=NOW_S).ignored is None
    late = handle_command(DEFAULT, last, payload, device_time_s=NOW_S + 600)
    assert late.ignored == "stale retained command"
    assert late.state == DEFAULT
