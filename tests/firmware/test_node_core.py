"""The firmware core under CPython: payloads, buffer, batches, commands, actuator, config, node."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fieldhub_node.actuator import ActuatorError, WindowActuator
from fieldhub_node.audio import FLOOR_DBFS, rms_dbfs
from fieldhub_node.buffer import MAX_BATCH_BYTES, RingBuffer, next_batch
from fieldhub_node.commands import MAX_COMMAND_BYTES, RecentAcks, parse
from fieldhub_node.config import ConfigError, device_id, device_id_from_mac, needs_portal, validate
from fieldhub_node.node import Actuate, Node, Publish, Reboot
from fieldhub_node.telemetry import Stamper, telemetry_payload

EPOCH_MS = 1_763_900_000_000
MAC = bytes([0x3C, 0xE9, 0x0E, 0x72, 0x12, 0x4C])
READINGS = {"temperature": 21.5, "humidity": 45.0, "rssi": -60}


def config(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "wifi": {"ssid": "lab", "password": "secret12"},
        "mqtt": {"host": "10.0.0.2"},
    }
    raw.update(overrides)
    return validate(raw)


def online_node(**overrides: Any) -> Node:
    node = Node(config(**overrides), "node-1")
    [status] = node.on_connect(0)
    assert (status.topic, status.payload, status.retain) == (
        "devices/node-1/status",
        b"online",
        True,
    )
    return node


def command(node: Node, body: Any, now_ms: int = 0) -> list[Any]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return node.on_message(node.commands_topic, payload, now_ms)


def ack_of(actions: list[Any]) -> dict[str, Any]:
    [ack] = [a for a in actions if isinstance(a, Publish)]
    assert ack.topic == "devices/node-1/commands/ack"
    result: dict[str, Any] = json.loads(ack.payload)
    return result


# --- telemetry -----------------------------------------------------------------------------


def test_live_telemetry_has_the_native_shape() -> None:
    """v, seq, device ts in epoch ms, the readings and the window position echo."""
    node = online_node()
    [publish] = node.on_reading(READINGS, 0, EPOCH_MS)
    assert publish.topic == "devices/node-1/telemetry"
    assert not publish.retain
    assert json.loads(publish.payload) == {
        "v": 1, "ts": EPOCH_MS, "seq": 0, **READINGS, "window_position": 0,
    }  # fmt: skip
    assert b" " not in publish.payload  # compact: every byte costs airtime


def test_telemetry_without_a_synced_clock_has_no_ts() -> None:
    """Before NTP answers there is no device time: fieldhub then uses its receive time."""
    assert json.loads(telemetry_payload(None, 3, {"a": 1})) == {"v": 1, "seq": 3, "a": 1}


def test_bad_sensor_values_are_left_out_and_counted() -> None:
    """NaN, None and strings never reach the payload; the other readings still do."""
    node = online_node()
    [publish] = node.on_reading({"t": float("nan"), "h": None, "x": "e", "ok": True}, 0, EPOCH_MS)
    body = json.loads(publish.payload)
    assert body["ok"] == 1
    assert "t" not in body
    assert "h" not in body
    assert "x" not in body
    assert node.invalid_readings == 3


def test_stamper_keeps_ts_strictly_increasing() -> None:
    """A clock that stands still or steps back still yields increasing ts."""
    stamper = Stamper()
    stamps = [stamper.next(ms)[1] for ms in (100, 100, 50, 200)]
    assert stamps == [100, 101, 102, 200]


def test_telemetry_is_due_once_per_interval() -> None:
    """First reading at once, then every telemetry_interval_s."""
    node = online_node(telemetry_interval_s=5)
    assert node.telemetry_due(0)
    node.on_reading(READINGS, 0, EPOCH_MS)
    assert not node.telemetry_due(4_999)
    assert node.telemetry_due(5_000)


# --- ring buffer and batches ---------------------------------------------------------------


def test_ring_buffer_drops_the_oldest_and_counts() -> None:
    """Capacity is never exceeded; overflow discards the oldest entries and counts them."""
    ring = RingBuffer(3)
    for value in range(5):
        ring.append(value)
    assert len(ring) == 3
    assert ring.dropped == 2
    assert [ring.get(i) for i in range(ring.first, ring.first + ring.count)] == [2, 3, 4]
    assert ring.release_until(4) == 2
    assert [ring.get(ring.first)] == [4]
    with pytest.raises(IndexError):
        ring.get(0)


def test_batches_stay_under_the_byte_limit_and_cover_everything_in_order() -> None:
    """Every batch is a JSON array <= the limit; together they hold every entry once, in order."""
    ring = RingBuffer(500)
    for i in range(500):
        ring.append((EPOCH_MS + i, {"temperature": 20.0 + i / 100, "humidity": 50.5, "seq": i}))
    seen: list[int] = []
    sizes = []
    while (batch := next_batch(ring, max_bytes=1024)) is not None:
        payload, end = batch
        sizes.append(len(payload))
        entries = json.loads(payload)
        assert all(set(e) == {"ts", "values"} for e in entries)
        seen.extend(e["values"]["seq"] for e in entries)
        ring.release_until(end)
    assert seen == list(range(500))
    assert max(sizes) <= 1024
    assert len(sizes) > 1


def test_default_batches_respect_8_kib() -> None:
    """With the default limits a batch is at most 8 KiB."""
    ring = RingBuffer(2000)
    for i in range(2000):
        ring.append((EPOCH_MS + i, {"temperature": 21.25, "humidity": 45.5, "rssi": -61, "seq": i}))
    payload, _ = next_batch(ring) or (b"", 0)
    assert 0 < len(payload) <= MAX_BATCH_BYTES


# --- offline / online state machine -------------------------------------------------------


def test_offline_readings_are_buffered_then_backfilled_after_reconnect() -> None:
    """Offline readings with a clock wait in the buffer and go out as {ts, values} batches."""
    node = online_node()
    node.on_disconnect()
    for i in range(5):
        assert node.on_reading(READINGS, i * 1000, EPOCH_MS + i * 1000) == []
    assert len(node.buffer) == 5
    assert node.poll(5_000) == []  # nothing is sent while offline
    [status] = node.on_connect(6_000)
    assert status.payload == b"online"
    [batch] = node.poll(6_000)
    entries = json.loads(batch.payload)
    assert [e["ts"] for e in entries] == [EPOCH_MS + i * 1000 for i in range(5)]
    assert [e["values"]["seq"] for e in entries] == [0, 1, 2, 3, 4]
    assert all(e["values"]["window_position"] == 0 for e in entries)
    assert all(isinstance(v, int | float) for e in entries for v in e["values"].values())
    assert node.poll(6_000) == []  # one batch in flight at a time
    node.on_published(batch.token)
    assert len(node.buffer) == 0
    assert node.poll(6_000) == []


def test_a_batch_lost_with_the_connection_is_sent_again() -> None:
    """Without the PUBACK the batch stays buffered and is sent again after the next connect."""
    node = online_node()
    node.on_disconnect()
    node.on_reading(READINGS, 0, EPOCH_MS)
    node.on_connect(1)
    [first] = node.poll(1)
    node.on_disconnect()
    node.on_connect(2)
    [again] = node.poll(2)
    assert again.payload == first.payload
    node.on_published(first.token)  # the old PUBACK arriving late is harmless
    node.on_published(again.token)
    assert len(node.buffer) == 0


def test_a_live_reading_whose_publish_failed_is_buffered() -> None:
    """A telemetry publish that broke with the connection is kept for backfill."""
    node = online_node()
    [publish] = node.on_reading(READINGS, 0, EPOCH_MS)
    node.on_disconnect()
    node.on_publish_failed(publish.token)
    assert len(node.buffer) == 1


def test_offline_readings_without_a_clock_are_dropped_and_counted() -> None:
    """No device time, no backfill: such a reading is counted, not buffered."""
    node = Node(config(), "node-1")
    node.on_reading(READINGS, 0, None)
    assert (len(node.buffer), node.unstamped_dropped) == (0, 1)


def test_buffer_overflow_is_reported_in_telemetry() -> None:
    """The drop count of the ring buffer goes out as `buffer_dropped` once non-zero."""
    node = Node(config(buffer_entries=16), "node-1")
    for i in range(20):
        node.on_reading(READINGS, i, EPOCH_MS + i)
    assert (len(node.buffer), node.buffer.dropped) == (16, 4)
    node.on_connect(100)
    [publish] = node.on_reading(READINGS, 100, EPOCH_MS + 100)
    assert json.loads(publish.payload)["buffer_dropped"] == 4


def test_goodbye_is_retained_offline() -> None:
    """A graceful stop says retained `offline` (the will only fires on a lost connection)."""
    node = online_node()
    [bye] = node.goodbye()
    assert (bye.topic, bye.payload, bye.retain) == (node.will_topic, b"offline", True)
    assert node.will_payload == b"offline"


# --- commands ---------------------------------------------------------------------------------


def test_set_window_moves_acks_and_echoes_in_telemetry() -> None:
    """set_window drives the servo, acks ok with the position, and telemetry reports it."""
    node = online_node()
    actions = command(node, {"id": "c1", "name": "set_window", "params": {"position": 40}})
    assert isinstance(actions[0], Actuate)
    assert actions[0].pulse_us == 1400
    assert ack_of(actions) == {
        "id": "c1", "status": "ok", "result": {"position": 40, "pulse_us": 1400},
    }  # fmt: skip
    [publish] = node.on_reading(READINGS, 0, EPOCH_MS)
    assert json.loads(publish.payload)["window_position"] == 40


@pytest.mark.parametrize(
    ("position", "error"),
    [
        (101, "0-100"),
        (-1, "0-100"),
        ("50", "must be a number"),
        (True, "must be a number"),
        (None, "must be a number"),
    ],
)
def test_set_window_refuses_bad_positions(position: Any, error: str) -> None:
    """Out of range and non-numbers get an error ack and do not move the window."""
    node = online_node()
    actions = command(node, {"id": "c", "name": "set_window", "params": {"position": position}})
    ack = ack_of(actions)
    assert ack["status"] == "error"
    assert error in ack["error"]
    assert not any(isinstance(a, Actuate) for a in actions)
    assert node.window.position == 0


def test_actuator_limits_clamp_and_say_so() -> None:
    """Inside 0..100 but beyond the installation's travel: clamped, `clamped` in the result."""
    window = WindowActuator(
        {"min_pulse_us": 600, "max_pulse_us": 2400, "min_position": 10, "max_position": 80,
         "initial_position": 0}
    )  # fmt: skip
    assert window.position == 10
    assert window.request({"position": 95}) == {"position": 80, "pulse_us": 2040, "clamped": True}
    assert window.pulse_us(0) == 600
    assert window.pulse_us(100) == 2400
    with pytest.raises(ActuatorError, match="position"):
        window.request({})


def test_set_interval_is_bounded() -> None:
    """set_interval changes the period within 1..3600 s and refuses anything else."""
    node = online_node()
    ok = ack_of(command(node, {"id": "a", "name": "set_interval", "params": {"seconds": 2}}))
    assert ok["status"] == "ok"
    assert node.interval_ms == 2000
    for bad in (0, 3601, "5", None):
        ack = ack_of(
            command(node, {"id": f"b{bad}", "name": "set_interval", "params": {"seconds": bad}})
        )
        assert ack["status"] == "error"
    assert node.interval_ms == 2000


def test_ping_and_unknown_commands() -> None:
    """ping answers ok; an unknown name gets an error ack naming the known ones."""
    node = online_node()
    assert ack_of(command(node, {"id": "p", "name": "ping"}))["result"]["pong"] is True
    ack = ack_of(command(node, {"id": "u", "name": "dance", "params": {}}))
    assert ack["status"] == "error"
    assert "set_window" in ack["error"]


def test_reboot_acks_before_rebooting() -> None:
    """The ack goes out first; the Reboot action is last."""
    actions = command(online_node(), {"id": "r", "name": "reboot"})
    assert isinstance(actions[0], Publish)
    assert isinstance(actions[-1], Reboot)


def test_a_repeated_id_runs_once_and_resends_the_same_ack() -> None:
    """The second delivery of an id gets the identical ack and no second execution."""
    node = online_node()
    body = {"id": "same", "name": "set_window", "params": {"position": 70}}
    first = command(node, body)
    node.window.position = 5  # if it ran again, the position would change back to 70
    second = command(node, body)
    assert [a.payload for a in second if isinstance(a, Publish)] == [
        a.payload for a in first if isinstance(a, Publish)
    ]
    assert not any(isinstance(a, Actuate) for a in second)
    assert (node.commands_executed, node.commands_repeated, node.window.position) == (1, 1, 5)


def test_recent_acks_are_bounded() -> None:
    """The dedupe memory forgets the oldest ids beyond its capacity."""
    acks = RecentAcks(capacity=3)
    for i in range(5):
        acks.put(str(i), b"x")
    assert len(acks) == 3
    assert acks.get("0") is None
    assert acks.get("4") == b"x"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[1,2]",
        b'{"name":"ping"}',
        b'{"id":5,"name":"ping"}',
        b'{"id":"","name":"ping"}',
        b"\xff\xfe",
        b"[" * 100_000,
        b'{"id":"x"}' + b" " * MAX_COMMAND_BYTES,
    ],
)
def test_commands_without_a_usable_id_are_counted_not_acked(payload: bytes) -> None:
    """No id, no ack (nobody could match it): the message is counted as rejected."""
    node = online_node()
    assert command(node, payload) == []
    assert node.commands_rejected == 1


def test_parse_reports_bad_names_and_params_with_the_id() -> None:
    """With a usable id, malformed name or params still get an error ack."""
    assert parse(b'{"id":"a","name":"ping","params":[1]}')[3] == "params must be a JSON object"
    node = online_node()
    assert ack_of(command(node, {"id": "n", "name": 7}))["status"] == "error"


def test_messages_on_other_topics_are_ignored() -> None:
    """Only the node's own commands topic is read."""
    node = online_node()
    assert node.on_message("devices/other/commands", b'{"id":"a","name":"ping"}', 0) == []


# --- config -----------------------------------------------------------------------------------


def test_config_defaults_fill_a_minimal_file() -> None:
    """A file with WiFi and broker only is complete after validation."""
    cfg = config()
    assert cfg["mqtt"]["port"] == 1883
    assert cfg["sensor"]["type"] == "dht22"
    assert cfg["window"]["min_pulse_us"] == 1000
    assert not needs_portal(cfg)


def test_config_lists_every_problem_at_once() -> None:
    """Each mistake is named in words; all of them in one error."""
    with pytest.raises(ConfigError) as caught:
        validate(
            {
                "wifi": {"ssid": "lab", "pasword": "x"},
                "mqtt": {"host": "h", "port": 70000},
                "sensor": {"type": "dht11"},
                "window": {"min_pulse_us": 2000, "max_pulse_us": 1000},
                "telemetry_interval_s": 0,
            }
        )
    problems = " | ".join(caught.value.problems)
    for expected in (
        "unknown setting wifi.pasword",
        "mqtt.port must be 1..65535",
        "sensor.type must be one of",
        "telemetry_interval_s must be 1..3600",
    ):
        assert expected in problems
    with pytest.raises(ConfigError, match="min_pulse_us must be below"):
        validate({"window": {"min_pulse_us": 2000, "max_pulse_us": 1000}})
    with pytest.raises(ConfigError, match="JSON object"):
        validate([])
    with pytest.raises(ConfigError, match=r"mqtt\.host is required"):
        validate({"wifi": {"ssid": "lab"}})


def test_no_wifi_means_the_setup_portal() -> None:
    """An empty file validates, and asks for the portal."""
    assert needs_portal(validate({}))


def test_device_id_defaults_to_the_canonical_mac() -> None:
    """The MAC in fieldhub's canonical spelling, unless device_id is set."""
    assert device_id_from_mac(MAC) == "3C:E9:0E:72:12:4C"
    assert device_id(config(), MAC) == "3C:E9:0E:72:12:4C"
    assert device_id(config(device_id="greenhouse-1"), MAC) == "greenhouse-1"
    with pytest.raises(ConfigError, match="device_id"):
        config(device_id="a/b")


# --- sound level ------------------------------------------------------------------------------


def test_rms_dbfs() -> None:
    """Full-scale square wave is 0 dBFS, half scale -6 dBFS, silence the floor."""
    full = [32767, -32768] * 50
    assert rms_dbfs(full, 16) == pytest.approx(0.0, abs=0.1)
    assert rms_dbfs([16384, -16384] * 50, 16) == pytest.approx(-6.0, abs=0.1)
    assert rms_dbfs([1000] * 100, 16) == FLOOR_DBFS  # pure DC offset is silence
    assert rms_dbfs([], 32) == FLOOR_DBFS
