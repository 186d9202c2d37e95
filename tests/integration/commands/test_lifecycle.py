"""The command lifecycle (docs/commands.md) with the native format, end to end: a real Mosquitto, a
real `fieldhub up`, and devices that are either the firmware core (NativeDevice) or raw MQTT
clients answering as the test says.

Most tests share one broker and one fieldhub (each with its own device ids); the restart and
rate-limit tests start their own.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.sync.client import connect

from conftest import MosquittoFactory
from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.protocol.timestamps import format_us
from fieldhub.sim.native import NativeDevice
from support.commands import (
    FINAL_STATES,
    Json,
    RawNativeDevice,
    ack_error,
    delete_command,
    error_code,
    get_command,
    post_command,
    recorder,
    wait_device,
    wait_state,
)
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LATE_REPLIES = "fieldhub_command_late_replies_total"


def epoch_us(iso: str) -> int:
    """An API time (ISO 8601 with microseconds and Z) as epoch microseconds."""
    return (datetime.fromisoformat(iso) - _EPOCH) // timedelta(microseconds=1)


def unique_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def states(command: Json) -> list[str]:
    return [step["state"] for step in command["history"]]


def native(url: str, device_id: str, closing: ExitStack) -> NativeDevice:
    """A started NativeDevice (the firmware core): retained `online`, commands subscribed."""
    device = NativeDevice(endpoint=parse_mqtt_url(url), device_id=device_id)
    device.start()
    closing.callback(device.stop)
    assert device.wait_connected(10), f"{device_id} could not connect"
    return device


def raw_device(
    url: str, device_id: str, closing: ExitStack, answer: Callable[[Json], Json | None] | None
) -> RawNativeDevice:
    device = RawNativeDevice(url, device_id, answer=answer)
    device.start()
    closing.callback(device.stop)
    return device


def sigterm(fh: FieldhubProcess) -> None:
    """Stop fieldhub with SIGTERM (what a service manager sends) and check it shut down cleanly.

    uvicorn runs the lifespan shutdown and then re-raises the signal, so the exit status is
    -SIGTERM rather than 0; the log says whether the shutdown completed."""
    assert fh.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in fh.log_tail(), fh.log_tail()


def went_offline(fh: FieldhubProcess, url: str, device_id: str, closing: ExitStack) -> None:
    """A NativeDevice that fieldhub saw online and then saw stop (retained `offline`)."""
    device = native(url, device_id, closing)
    wait_device(fh, device_id, presence="online")
    assert device.stop(), "the broker did not acknowledge the device's `offline`"
    wait_device(fh, device_id, presence="offline")


# -- the happy path -----------------------------------------------------------------------------


def test_set_window_is_acked_stored_and_echoed_in_telemetry(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = unique_id("cmd-ok")
    device = native(broker.url, device_id, closing)
    wait_device(fh, device_id, presence="online", command_format="native")

    response = post_command(
        fh, device_id, {"name": "set_window", "params": {"position": 65}}, wait_s=5
    )
    assert response.status_code == 201, response.text
    command = response.json()
    assert command["state"] == "succeeded", command
    assert command["decided_by"] == "ack"
    assert command["result"]["position"] == 65
    assert command["error"] is None
    assert command["device"] == device_id
    assert (command["name"], command["params"]) == ("set_window", {"position": 65})
    assert command["format"] == "native"
    assert command["topic"] == f"devices/{device_id}/commands"
    assert command["timeout_s"] == 10.0
    assert states(command) == ["pending", "sent", "succeeded"]
    times = [epoch_us(step["at"]) for step in command["history"]]
    assert times == sorted(times)
    assert epoch_us(command["created"]) == times[0]
    assert epoch_us(command["sent"]) == times[1]
    assert epoch_us(command["finished"]) == epoch_us(command["updated"]) == times[2]
    # The firmware ran it exactly once.
    assert device.node.commands_executed == 1
    assert device.window_position == 65

    # The node's next telemetry reports the new window position.
    future = device.publish_telemetry()
    assert future is not None
    future.result(timeout=10)

    def last_window_position() -> float | None:
        rows = fh.get(
            f"/api/v1/devices/{device_id}/readings", metric="window_position", limit=100
        ).json()["data"]
        return max(rows, key=lambda row: row["ts"])["value"] if rows else None

    assert wait_until(last_window_position, what="window_position in telemetry") == 65.0

    assert get_command(fh, device_id, command["id"]) == command
    listed = fh.get(f"/api/v1/devices/{device_id}/commands").json()
    assert listed == {"data": [{**command, "history": None}], "next_cursor": None}
    by_state = fh.get(f"/api/v1/devices/{device_id}/commands", state="succeeded").json()
    assert [c["id"] for c in by_state["data"]] == [command["id"]]
    assert fh.get(f"/api/v1/devices/{device_id}/commands", state="pending").json()["data"] == []


def test_list_is_newest_first_and_paginated(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = unique_id("cmd-page")
    native(broker.url, device_id, closing)
    wait_device(fh, device_id, presence="online")
    for n in range(3):
        response = post_command(fh, device_id, {"name": "ping", "id": f"page-{n}"}, wait_s=5)
        assert response.status_code == 201, response.text
        assert response.json()["state"] == "succeeded"
    first = fh.get(f"/api/v1/devices/{device_id}/commands", limit=2).json()
    assert [c["id"] for c in first["data"]] == ["page-2", "page-1"]
    assert first["next_cursor"]
    rest = fh.get(
        f"/api/v1/devices/{device_id}/commands", limit=2, cursor=first["next_cursor"]
    ).json()
    assert [c["id"] for c in rest["data"]] == ["page-0"]
    assert rest["next_cursor"] is None


def test_native_device_with_a_lower_case_mac_id_gets_commands_on_its_own_spelling(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    """A MAC id is canonicalised (`A4:CF:...`), but the command topic must keep the device's
    spelling (`devices/a4cf.../commands`): topics are case-sensitive."""
    spelled = "a4cf" + uuid.uuid4().hex[:8]
    canonical = ":".join(spelled[i : i + 2] for i in range(0, 12, 2)).upper()
    device = native(broker.url, spelled, closing)
    future = device.publish_telemetry()
    assert future is not None
    future.result(timeout=10)
    wait_device(fh, canonical, presence="online", command_format="native")
    response = post_command(
        fh, spelled, {"name": "set_window", "params": {"position": 5}}, wait_s=5
    )
    assert response.status_code == 201, response.text
    command = response.json()
    assert command["device"] == canonical
    assert command["topic"] == f"devices/{spelled}/commands"
    assert command["state"] == "succeeded", command
    assert device.window_position == 5


def test_lower_case_mac_device_heard_only_by_its_status_gets_commands_on_its_spelling(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    """The same before its first telemetry: the firmware connects, subscribes and publishes
    retained `online` on `devices/a4cf.../status`, which is all fieldhub has heard of it."""
    spelled = "a4cf" + uuid.uuid4().hex[:8]
    canonical = ":".join(spelled[i : i + 2] for i in range(0, 12, 2)).upper()
    device = native(broker.url, spelled, closing)
    wire = recorder(broker.url, "devices/+/commands", closing)
    wait_device(fh, canonical, presence="online", command_format="native")
    types = fh.get(f"/api/v1/devices/{spelled}/command-types").json()
    response = post_command(
        fh, spelled, {"name": "set_window", "params": {"position": 5}}, wait_s=3
    )
    assert response.status_code == 201, response.text
    command = response.json()
    wait_until(wire.messages, what="the command on the wire")
    assert [topic for topic, _ in wire.messages()] == [f"devices/{spelled}/commands"]
    assert command["topic"] == types["topic"] == f"devices/{spelled}/commands"
    assert command["state"] == "succeeded", command
    assert device.window_position == 5


# -- the device's answer ------------------------------------------------------------------------


def test_error_ack_fails_the_command_with_the_devices_reason(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = unique_id("cmd-err")
    device = raw_device(broker.url, device_id, closing, ack_error("jammed"))
    device.announce("online")
    wait_device(fh, device_id, presence="online")

    response = post_command(
        fh, device_id, {"name": "set_window", "params": {"position": 100}}, wait_s=5
    )
    assert response.status_code == 201, response.text
    command = response.json()
    assert command["state"] == "failed", command
    assert command["error"] == "jammed"
    assert command["decided_by"] == "ack"
    assert command["result"] is None
    assert states(command) == ["pending", "sent", "failed"]
    assert device.payloads() == [
        {"id": command["id"], "name": "set_window", "params": {"position": 100}}
    ]


def test_no_answer_times_out_and_a_late_ack_changes_nothing(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = unique_id("cmd-mute")
    device = raw_device(broker.url, device_id, closing, answer=None)
    device.announce("online")
    wait_device(fh, device_id, presence="online")

    response = post_command(fh, device_id, {"name": "ping", "timeout_s": 1}, wait_s=8)
    assert response.status_code == 201, response.text
    command = response.json()
    assert command["state"] == "timed_out", command
    assert command["decided_by"] == "timeout"
    assert command["timeout_s"] == 1.0
    assert states(command) == ["pending", "sent", "timed_out"]
    assert device.ids() == [command["id"]]  # the device did receive it

    late_before = fh.metric(LATE_REPLIES)
    device.ack({"id": command["id"], "status": "ok", "result": {}})
    wait_until(lambda: fh.metric(LATE_REPLIES) > late_before, what="the late ack to be counted")
    assert get_command(fh, device_id, command["id"]) == command


def test_malformed_ack_lands_in_dead_letters(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = unique_id("cmd-badack")
    device = raw_device(broker.url, device_id, closing, answer=None)
    device.announce("online")
    wait_device(fh, device_id, presence="online")
    bad = b'{"id": "x1", "status": "maybe"}'
    device.publish(device.ack_topic, bad)

    def dead() -> list[Json]:
        response = fh.get("/api/v1/dead-letters", reason="bad_command_ack", device=device_id)
        assert response.status_code == 200, response.text
        rows: list[Json] = response.json()["data"]
        return rows

    rows = wait_until(dead, what="the malformed ack as a dead letter")
    assert len(rows) == 1
    assert rows[0]["topic"] == device.ack_topic
    assert rows[0]["payload_text"] == bad.decode()
    assert rows[0]["device_id"] == device_id


# -- offline devices, expiry, cancel --------------------------------------------------------------


def test_command_for_an_offline_device_waits_then_goes_out_when_it_returns(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = unique_id("cmd-away")
    first = native(broker.url, device_id, closing)
    wait_device(fh, device_id, presence="online")
    first.crash()  # no DISCONNECT: the broker publishes the will
    wait_device(fh, device_id, presence="offline")
    wire = recorder(broker.url, f"devices/{device_id}/commands", closing)

    response = post_command(fh, device_id, {"name": "set_window", "params": {"position": 30}})
    assert response.status_code == 201, response.text
    command = response.json()
    assert command["state"] == "pending"
    assert command["sent"] is None
    time.sleep(1.0)  # long enough for a wrong send to show; there is nothing to wait on
    assert get_command(fh, device_id, command["id"])["state"] == "pending"
    assert wire.messages() == []

    back = native(broker.url, device_id, closing)
    done = wait_state(fh, device_id, command["id"], "succeeded")
    assert done["decided_by"] == "ack"
    assert states(done) == ["pending", "sent", "succeeded"]
    assert wire.ids_once(1) == [command["id"]]
    assert back.node.commands_executed == 1
    assert back.window_position == 30


def test_command_expires_while_the_device_is_away(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = unique_id("cmd-exp")
    went_offline(fh, broker.url, device_id, closing)
    wire = recorder(broker.url, f"devices/{device_id}/commands", closing)

    expires_us = time.time_ns() // 1000 + 1_500_000
    response = post_command(
        fh,
        device_id,
        {"name": "set_window", "params": {"position": 80}, "expires_at": format_us(expires_us)},
    )
    assert response.status_code == 201, response.text
    command = response.json()
    assert command["state"] == "pending"
    assert epoch_us(command["expires_at"]) == expires_us
    expired = wait_state(fh, device_id, command["id"], "expired", timeout_s=10)
    assert expired["decided_by"] == "expiry"
    assert expired["sent"] is None
    assert states(expired) == ["pending", "expired"]
    assert epoch_us(expired["finished"]) >= expires_us

    back = native(broker.url, device_id, closing)
    wait_device(fh, device_id, presence="online")
    # A command created after it goes out; the expired one, older, would have gone first.
    later = post_command(fh, device_id, {"name": "ping"}, wait_s=5)
    assert later.json()["state"] == "succeeded", later.text
    assert wire.ids_once(1) == [later.json()["id"]]
    assert back.node.commands_executed == 1
    assert back.window_position == 0


def test_cancel_a_pending_command_and_not_a_sent_or_final_one(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = unique_id("cmd-cancel")
    went_offline(fh, broker.url, device_id, closing)
    wire = recorder(broker.url, f"devices/{device_id}/commands", closing)

    command = post_command(fh, device_id, {"name": "set_window", "params": {"position": 10}})
    assert command.status_code == 201, command.text
    command_id = command.json()["id"]
    cancelled = delete_command(fh, device_id, command_id)
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["state"] == "cancelled"
    assert body["decided_by"] == "cancel"
    assert states(body) == ["pending", "cancelled"]
    # Idempotent (docs/commands.md): cancelled already, so the same answer and no new entry.
    again = delete_command(fh, device_id, command_id)
    assert again.status_code == 200, again.text
    assert again.json() == body
    assert get_command(fh, device_id, command_id) == body
    assert delete_command(fh, device_id, "no-such-command").status_code == 404
    assert delete_command(fh, unique_id("nobody"), command_id).status_code == 404

    back = native(broker.url, device_id, closing)
    wait_device(fh, device_id, presence="online")
    done = post_command(fh, device_id, {"name": "set_window", "params": {"position": 20}}, wait_s=5)
    assert done.json()["state"] == "succeeded", done.text
    final = delete_command(fh, device_id, done.json()["id"])
    assert final.status_code == 409, final.text
    assert error_code(final) == "not_pending"
    assert get_command(fh, device_id, done.json()["id"])["state"] == "succeeded"
    assert wire.ids_once(1) == [done.json()["id"]]  # the cancelled one never went out
    assert back.node.commands_executed == 1
    assert back.window_position == 20


# -- duplicates -----------------------------------------------------------------------------------


def test_a_repeated_id_is_one_command_and_the_firmware_runs_a_repeat_once(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = unique_id("cmd-dup")
    device = native(broker.url, device_id, closing)
    wire = recorder(broker.url, f"devices/{device_id}/commands", closing)
    acks = recorder(broker.url, f"devices/{device_id}/commands/ack", closing)
    wait_device(fh, device_id, presence="online")

    body = {"id": unique_id("dup"), "name": "set_window", "params": {"position": 20}}
    first = post_command(fh, device_id, body, wait_s=5)
    assert first.status_code == 201, first.text
    assert first.json()["state"] == "succeeded"
    second = post_command(fh, device_id, body)
    assert second.status_code == 200, second.text
    assert second.json() == first.json()
    conflict = post_command(fh, device_id, {**body, "params": {"position": 30}})
    assert conflict.status_code == 409, conflict.text
    assert error_code(conflict) == "conflict"
    other = post_command(fh, device_id, {"name": "ping"}, wait_s=5)
    assert other.json()["state"] == "succeeded", other.text
    assert wire.ids_once(2) == [body["id"], other.json()["id"]]  # the repeat was not sent again
    assert device.node.commands_executed == 2
    wait_until(lambda: len(acks.messages()) == 2, what="the two acks")

    # The firmware's dedupe, on the wire: the same id twice runs once and is acked twice...
    late_before = fh.metric(LATE_REPLIES)
    fresh = orjson.dumps({"id": unique_id("fw"), "name": "set_window", "params": {"position": 35}})
    wire.publish(wire.topic_filter, fresh)
    wire.publish(wire.topic_filter, fresh)
    wait_until(lambda: len(acks.messages()) == 4, what="an ack for each delivery")
    assert acks.messages()[2] == acks.messages()[3]
    assert orjson.loads(acks.messages()[2][1])["status"] == "ok"
    assert device.node.commands_executed == 3
    assert device.window_position == 35
    # ... and a redelivery of an old command does not move the window back.
    first_wire = wire.messages()[0]
    wire.publish(*first_wire)
    wait_until(lambda: len(acks.messages()) == 5, what="the ack of the redelivery")
    assert acks.messages()[4] == acks.messages()[0]
    assert device.node.commands_executed == 3
    assert device.window_position == 35
    # fieldhub counts the answers it had no use for and changes nothing.
    wait_until(
        lambda: fh.metric(LATE_REPLIES) >= late_before + 3, what="three late replies counted"
    )
    assert get_command(fh, device_id, body["id"]) == first.json()
    # An id is unique per device: another device may use it for another command.
    neighbour = unique_id("cmd-dup2")
    native(broker.url, neighbour, closing)
    wait_device(fh, neighbour, presence="online")
    theirs = post_command(fh, neighbour, {**body, "name": "ping", "params": {}}, wait_s=5)
    assert theirs.status_code == 201, theirs.text
    assert (theirs.json()["id"], theirs.json()["state"]) == (body["id"], "succeeded")
    assert get_command(fh, device_id, body["id"]) == first.json()


def test_concurrent_posts_with_one_id_make_one_command(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = unique_id("cmd-race")
    device = native(broker.url, device_id, closing)
    wire = recorder(broker.url, f"devices/{device_id}/commands", closing)
    wait_device(fh, device_id, presence="online")
    body = {"id": unique_id("race"), "name": "set_window", "params": {"position": 44}}
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def post() -> None:
        response = post_command(fh, device_id, body)
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in responses) == [200] * 5 + [201], [
        r.text for r in responses
    ]
    assert {r.json()["id"] for r in responses} == {body["id"]}
    wait_state(fh, device_id, body["id"], "succeeded")
    listed = fh.get(f"/api/v1/devices/{device_id}/commands").json()["data"]
    assert [c["id"] for c in listed] == [body["id"]]
    assert wire.ids_once(1) == [body["id"]]
    assert device.node.commands_executed == 1


# -- restarts -------------------------------------------------------------------------------------


def test_pending_commands_survive_a_restart_and_go_out_in_order(
    mosquitto_factory: MosquittoFactory, tmp_path: Path, closing: ExitStack
) -> None:
    broker = mosquitto_factory()
    env = {"FIELDHUB_MQTT_CLIENT_ID": unique_id("fh-restart")}
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=broker.url, env=env).start()
    closing.callback(fh.stop)
    device_id = unique_id("cmd-restart")
    went_offline(fh, broker.url, device_id, closing)
    wire = recorder(broker.url, f"devices/{device_id}/commands", closing)
    # Between the two, one that expires while fieldhub is down.
    expires_us = 0
    ids = []
    for position in (15, 99, 25):
        body: Json = {"name": "set_window", "params": {"position": position}}
        if position == 99:
            expires_us = time.time_ns() // 1000 + 1_500_000
            body["expires_at"] = format_us(expires_us)
        response = post_command(fh, device_id, body)
        assert response.status_code == 201, response.text
        assert response.json()["state"] == "pending"
        ids.append(response.json()["id"])
    sigterm(fh)
    wait_until(lambda: time.time_ns() // 1000 > expires_us, what="the expiry to pass")

    again = FieldhubProcess(data_dir=fh.data_dir, mqtt_url=broker.url, env=env).start()
    closing.callback(again.stop)
    expired = wait_state(again, device_id, ids[1], "expired")
    assert expired["decided_by"] == "expiry"
    assert [get_command(again, device_id, i)["state"] for i in (ids[0], ids[2])] == [
        "pending",
        "pending",
    ]
    back = native(broker.url, device_id, closing)
    for command_id in (ids[0], ids[2]):
        done = wait_state(again, device_id, command_id, "succeeded")
        assert done["decided_by"] == "ack"
    assert wire.ids_once(2) == [ids[0], ids[2]]  # oldest first, the expired one never
    assert back.node.commands_executed == 2
    assert back.window_position == 25
    assert again.stop() == 0


def test_an_ack_queued_while_fieldhub_was_down_ends_a_sent_command(
    mosquitto_factory: MosquittoFactory, tmp_path: Path, closing: ExitStack
) -> None:
    """`sent` across a restart: the device answers while fieldhub is down, the broker keeps the
    ack for ingest's persistent session, and the restart's grace lets it land although the
    command's own deadline has passed."""
    broker = mosquitto_factory()
    env = {"FIELDHUB_MQTT_CLIENT_ID": unique_id("fh-sent")}
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=broker.url, env=env).start()
    closing.callback(fh.stop)
    device_id = unique_id("cmd-sent")
    device = raw_device(broker.url, device_id, closing, answer=None)
    device.announce("online")
    wait_device(fh, device_id, presence="online")

    timeout_s = 3.0
    response = post_command(
        fh, device_id, {"name": "set_window", "params": {"position": 55}, "timeout_s": timeout_s}
    )
    assert response.status_code == 201, response.text
    command_id = response.json()["id"]
    sent = wait_state(fh, device_id, command_id, "sent", timeout_s=timeout_s)
    sigterm(fh)
    assert device.ids() == [command_id]
    stored = sent["sent"]

    device.ack({"id": command_id, "status": "ok", "result": {"position": 55}})
    deadline_s = epoch_us(stored) / 1e6 + timeout_s
    wait_until(lambda: time.time() > deadline_s + 0.2, what="the command's own deadline to pass")

    again = FieldhubProcess(data_dir=fh.data_dir, mqtt_url=broker.url, env=env).start()
    closing.callback(again.stop)
    done = wait_state(again, device_id, command_id, "succeeded", timeout_s=15)
    assert done["decided_by"] == "ack"
    assert done["result"] == {"position": 55}
    assert done["sent"] == stored
    assert states(done) == ["pending", "sent", "succeeded"]
    assert again.stop() == 0


# -- refused requests -----------------------------------------------------------------------------


def test_requests_fieldhub_refuses(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    native_id = unique_id("cmd-bad")
    native(broker.url, native_id, closing)
    wire = recorder(broker.url, f"devices/{native_id}/commands", closing)
    mac_digits = uuid.uuid4().hex[:6].upper()
    fastapi_topic_id = f"3CE90E{mac_digits}"
    gateway_mac = "3C:E9:0F:" + ":".join(mac_digits[i : i + 2] for i in range(0, 6, 2))
    publisher = connected_publisher(broker.url)
    closing.callback(publisher.stop)
    fastapi_data = {"temperature": 21.5, "servo_angle": 90, "light_state": False}
    publish_all(
        publisher,
        [
            (f"devices/{fastapi_topic_id}/data", orjson.dumps(fastapi_data)),
            (
                f"/readings/gateway/{gateway_mac}",
                f'{{"macAddress":"{gateway_mac}", "timestamp":93387, "rssi":65}}'.encode(),
            ),
        ],
    )
    wait_device(fh, native_id, presence="online", command_format="native")
    wait_device(fh, fastapi_topic_id, command_format="fastapi")
    gateway = wait_device(fh, gateway_mac)
    assert gateway["profile"] == "readings"

    def refused(device_id: str, body: Json, status: int, code: str) -> httpx.Response:
        response = post_command(fh, device_id, body)
        assert response.status_code == status, response.text
        assert error_code(response) == code, response.text
        return response

    refused(unique_id("nobody"), {"name": "ping"}, 404, "not_found")
    refused(fastapi_topic_id, {"name": "reboot"}, 422, "unknown_command")
    refused(
        fastapi_topic_id, {"name": "SERVO_ANGLE", "params": {"angle": 181}}, 422, "invalid_params"
    )
    refused(
        fastapi_topic_id, {"name": "set_servo", "params": {"angle": 90}}, 422, "unknown_command"
    )
    refused(native_id, {"name": "set_window", "params": {"position": 140}}, 422, "invalid_params")
    refused(native_id, {"name": "set_window", "params": {"position": "50"}}, 422, "invalid_params")
    refused(native_id, {"name": "set_window", "params": {}}, 422, "invalid_params")
    refused(
        native_id,
        {"name": "set_window", "params": {"position": 5, "speed": 1}},
        422,
        "invalid_params",
    )
    refused(gateway_mac, {"name": "ping"}, 422, "commands_unsupported")
    types = fh.get(f"/api/v1/devices/{gateway_mac}/command-types").json()
    assert types["format"] is None
    assert types["commands"] == []
    past_iso = format_us(time.time_ns() // 1000 - 60_000_000)
    refused(native_id, {"name": "ping", "expires_at": past_iso}, 422, "invalid_parameter")
    refused(
        native_id, {"name": "ping", "expires_at": int(time.time()) - 60}, 422, "invalid_parameter"
    )
    # Over the firmware's 2,048-byte command limit (an unknown name passes through unchecked).
    refused(native_id, {"name": "blob", "params": {"x": "a" * 3000}}, 413, "payload_too_large")
    # JSON a device could not parse either (schemathesis found it as a 500).
    refused(native_id, {"name": "blob", "params": {"x": 2**80}}, 422, "invalid_params")
    # Nothing refused was stored or sent.
    assert fh.get(f"/api/v1/devices/{native_id}/commands").json()["data"] == []
    assert fh.get(f"/api/v1/devices/{fastapi_topic_id}/commands").json()["data"] == []
    assert wire.messages() == []


def test_rate_limit_answers_429_with_retry_after(
    broker: MosquittoProcess, tmp_path: Path, closing: ExitStack
) -> None:
    limited = FieldhubProcess(
        data_dir=tmp_path / "fh",
        mqtt_url=broker.url,
        env={
            "FIELDHUB_MQTT_CLIENT_ID": unique_id("fh-rate"),
            "FIELDHUB_COMMAND_RATE_PER_S": "1",
            "FIELDHUB_COMMAND_BURST": "2",
        },
    ).start()
    closing.callback(limited.stop)
    device_id = unique_id("cmd-rate")
    went_offline(limited, broker.url, device_id, closing)

    answers = [post_command(limited, device_id, {"name": "ping"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 429], [a.text for a in answers]
    assert error_code(answers[2]) == "rate_limited"
    retry_after = int(answers[2].headers["Retry-After"])
    assert retry_after == 1
    # Another device has its own bucket.
    other = unique_id("cmd-rate2")
    went_offline(limited, broker.url, other, closing)
    assert post_command(limited, other, {"name": "ping"}).status_code == 201
    # After Retry-After, a token is free again.
    time.sleep(retry_after)
    assert post_command(limited, device_id, {"name": "ping"}).status_code == 201
    listed = limited.get(f"/api/v1/devices/{device_id}/commands").json()["data"]
    assert len(listed) == 3
    assert limited.stop() == 0


# -- live -----------------------------------------------------------------------------------------


class Live:
    """A viewer of /api/v1/live subscribed to one device's command frames."""

    def __init__(self, fh: FieldhubProcess, device_id: str, closing: ExitStack) -> None:
        url = fh.base_url.replace("http://", "ws://") + "/api/v1/live"
        self.ws = closing.enter_context(connect(url, proxy=None, open_timeout=10))
        assert self.frame()["type"] == "hello"
        self.ws.send(
            orjson.dumps(
                {"op": "subscribe", "devices": [device_id], "events": ["commands"]}
            ).decode()
        )
        subscribed = self.frame()
        assert subscribed["type"] == "subscribed", subscribed
        assert subscribed["events"] == ["commands"]

    def frame(self, timeout_s: float = 10.0) -> dict[str, Any]:
        received: dict[str, Any] = orjson.loads(self.ws.recv(timeout=timeout_s))
        return received

    def commands_until_final(self, command_id: str) -> list[dict[str, Any]]:
        """The `command` of each frame about `command_id`, up to its first final state."""
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["state"] not in FINAL_STATES:
            got = self.frame()
            if got["type"] == "command" and got["command"]["id"] == command_id:
                seen.append(got["command"])
        return seen


def test_live_subscribers_see_each_transition_in_order(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = unique_id("cmd-live")
    native(broker.url, device_id, closing)
    wait_device(fh, device_id, presence="online")
    live = Live(fh, device_id, closing)
    response = post_command(
        fh, device_id, {"name": "set_window", "params": {"position": 70}}, wait_s=5
    )
    assert response.json()["state"] == "succeeded", response.text
    command_id = response.json()["id"]
    seen = live.commands_until_final(command_id)
    assert [c["state"] for c in seen] == ["pending", "sent", "succeeded"]
    assert all("history" not in c for c in seen)
    assert [c["decided_by"] for c in seen] == [None, None, "ack"]
    assert seen[-1]["result"] == response.json()["result"]
    assert [c["transition"] for c in seen] == response.json()["history"]


def test_live_subscribers_see_a_sent_recorded_after_the_puback(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    """The device acks only once the command is `sent` (fieldhub recorded the broker's PUBACK):
    three transitions stored one by one, three frames."""
    device_id = unique_id("cmd-live2")
    device = raw_device(broker.url, device_id, closing, answer=None)
    device.announce("online")
    wait_device(fh, device_id, presence="online")
    live = Live(fh, device_id, closing)
    response = post_command(fh, device_id, {"name": "set_window", "params": {"position": 70}})
    assert response.status_code == 201, response.text
    command_id = response.json()["id"]
    wait_state(fh, device_id, command_id, "sent")
    device.ack({"id": command_id, "status": "ok", "result": {"position": 70}})
    seen = live.commands_until_final(command_id)
    assert [c["state"] for c in seen] == ["pending", "sent", "succeeded"]
    assert seen[-1]["decided_by"] == "ack"
    assert seen[-1]["result"] == {"position": 70}
    assert [c["transition"] for c in seen] == get_command(fh, device_id, command_id)["history"]


def test_live_subscribers_see_the_implied_sent_of_an_ack_that_beat_the_puback(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    """An ack that arrives while the command is still `pending` (docs/commands.md: recorded as
    `sent` at the same moment, then the end state). Made deterministic: the device is offline,
    so fieldhub has not sent the command, and it answers the id it was given anyway."""
    device_id = unique_id("cmd-implied")
    went_offline(fh, broker.url, device_id, closing)
    live = Live(fh, device_id, closing)
    command_id = unique_id("early")
    response = post_command(fh, device_id, {"id": command_id, "name": "ping"})
    assert response.json()["state"] == "pending", response.text
    device = raw_device(broker.url, device_id, closing, answer=None)
    device.ack({"id": command_id, "status": "ok", "result": {"pong": True}})
    done = wait_state(fh, device_id, command_id, "succeeded")
    assert states(done) == ["pending", "sent", "succeeded"]
    assert done["decided_by"] == "ack"
    seen = live.commands_until_final(command_id)
    assert [c["transition"] for c in seen] == done["history"]
    assert [c["state"] for c in seen] == ["pending", "sent", "succeeded"]
