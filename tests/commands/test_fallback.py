"""The FastAPI stack's retained fallback (`devices/{MAC}/commands/last`): what the dispatcher
leaves there for an offline node and when it clears it (docs/commands.md). The broker side is in
tests/integration/commands/test_legacy.py; here the bookkeeping, with a recording publisher."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import orjson

from fieldhub.clock import ManualClock
from fieldhub.commands.active import ActiveCommand, ActiveCommands
from fieldhub.commands.dispatch import Dispatcher
from fieldhub.commands.formats import FORMATS
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.protocol.command_states import CommandState
from fieldhub.store.types import CommandRow

MAC = "3CE90E100001"
CLOCK = ManualClock(start_us=1_764_914_400_000_000)


class Recording:
    connected = True

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> Any:
        self.published.append((topic, payload, qos, retain))
        done: Future[None] = Future()
        done.set_result(None)
        return done


def dispatcher() -> tuple[Dispatcher, Recording]:
    made = Dispatcher(
        store=None,  # type: ignore[arg-type]
        clock=CLOCK,
        active=ActiveCommands(),
        deadlines=None,  # type: ignore[arg-type]
        tracker=None,  # type: ignore[arg-type]
        tasks=None,  # type: ignore[arg-type]
        endpoint=parse_mqtt_url("mqtt://127.0.0.1:1"),
        client_id="t-fallback",
        protocol=5,
    )
    recording = Recording()
    made._publisher = recording  # type: ignore[assignment]
    return made, recording


def command(command_id: str, name: str, params: dict[str, object]) -> ActiveCommand:
    row = CommandRow(
        device_id="3C:E9:0E:10:00:01",
        command_id=command_id,
        name=name,
        params=params,
        format="fastapi",
        topic=f"devices/{MAC}/commands",
        state=CommandState.PENDING,
        created_us=CLOCK.now_us(),
        updated_us=CLOCK.now_us(),
        timeout_s=10.0,
        expires_us=None,
    )
    return ActiveCommand(row, FORMATS["fastapi"], None)


def test_a_state_command_is_left_retained_and_cleared_once_sent() -> None:
    made, wire = dispatcher()
    light = command("c-1", "LIGHT_CONTROL", {"state": True})
    assert made.leave_fallback(light)
    [(topic, payload, qos, retain)] = wire.published
    assert (topic, qos, retain) == (f"devices/{MAC}/commands/last", 1, True)
    assert payload == (
        b'{"action":"LIGHT_CONTROL","state":true,"message_id":"c-1","cmd_timestamp":1764914400}'
    )
    made.settled(light.row)  # still pending: stays
    assert len(wire.published) == 1
    made.settled(replace(light.row, state=CommandState.SENT))
    assert wire.published[1] == (f"devices/{MAC}/commands/last", b"", 1, True)
    made.settled(replace(light.row, state=CommandState.SUCCEEDED))  # cleared once only
    assert len(wire.published) == 2


def test_reboot_firmware_and_status_are_never_left_there() -> None:
    made, wire = dispatcher()
    for name, params in (
        ("REBOOT", {}),
        ("STATUS_REQUEST", {}),
        ("FIRMWARE_UPDATE", {"url": "http://h/fw.bin"}),
    ):
        assert not made.leave_fallback(command("c-1", name, params))
    assert wire.published == []


def test_only_the_newest_command_held_there_clears_it() -> None:
    made, wire = dispatcher()
    older = command("c-1", "FAN_CONTROL", {"state": True})
    newer = command("c-2", "SERVO_ANGLE", {"angle": 30})
    made.leave_fallback(older)
    made.leave_fallback(newer)
    made.settled(replace(older.row, state=CommandState.CANCELLED))
    assert [orjson.loads(p)["message_id"] for _, p, _, _ in wire.published] == ["c-1", "c-2"]
    made.settled(replace(newer.row, state=CommandState.EXPIRED))
    assert wire.published[-1][1] == b""


def test_a_command_loaded_at_start_clears_what_it_may_have_left() -> None:
    made, wire = dispatcher()
    loaded = command("c-9", "RELAY_CONTROL", {"relay": 3, "state": True})
    made.held_fallback(loaded)
    made.held_fallback(command("c-10", "REBOOT", {}))  # never left there: holds nothing
    made.settled(replace(loaded.row, state=CommandState.SENT))
    assert wire.published == [(f"devices/{MAC}/commands/last", b"", 1, True)]
