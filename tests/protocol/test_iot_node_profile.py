"""The `iot-node` profile: the Raspberry Pi/Mosquitto/Telegraf stack's topics and payloads."""

from __future__ import annotations

import json
from typing import Any

from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.messages import Decoded, Ignored, Reading, Rejected, RejectReason
from fieldhub.protocol.profiles import DEFAULT_PROFILES, select_profiles
from fieldhub.protocol.timestamps import US_PER_S

RECEIVED_US = 1_795_442_400 * US_PER_S  # 2026-11-23T14:00:00Z
DEVICE_S = 1_795_442_390  # ten seconds earlier, by the node's clock
# The stack's documented telemetry message.
TELEMETRY = {
    "node_id": "node_01",
    "timestamp": DEVICE_S,
    "sensors": {"temperature": 22.5, "humidity": 45.2},
    "wifi_rssi": -65,
    "uptime": 3600,
}
DECODER = MessageDecoder(select_profiles(DEFAULT_PROFILES))


def decode(topic: str, payload: Any) -> Decoded | Ignored | Rejected:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return DECODER.decode(topic, raw, RECEIVED_US)


def test_telemetry_is_stored_at_the_node_time_with_fleet_wide_names() -> None:
    result = decode("iot/node/01/telemetry", TELEMETRY)
    assert isinstance(result, Decoded)
    assert (result.device_id, result.profile, result.channel) == ("01", "iot-node", "telemetry")
    assert result.device_time is True
    ts = DEVICE_S * US_PER_S
    assert sorted(result.readings) == sorted(
        [
            Reading("temperature", ts, 22.5),
            Reading("humidity", ts, 45.2),
            Reading("rssi", ts, -65.0),
            Reading("uptime_s", ts, 3600.0),
        ]
    )
    assert result.attributes == {"node_id": "node_01"}


def test_status_health_json_is_a_heartbeat_with_readings() -> None:
    result = decode("iot/node/02/status", {"uptime": 7200, "wifi_rssi": -70})
    assert isinstance(result, Decoded)
    assert result.presence == "online"
    assert {r.metric: r.value for r in result.readings} == {"uptime_s": 7200.0, "rssi": -70.0}


def test_status_offline_word_marks_the_node_offline() -> None:
    result = decode("iot/node/02/status", b"offline")
    assert isinstance(result, Decoded)
    assert result.presence == "offline"


def test_commands_published_to_nodes_are_not_data() -> None:
    command = {"command": "set_led", "params": {"state": "on", "brightness": 128}}
    assert decode("iot/node/01/command", command) == Ignored("commands")


def test_unknown_node_topic_is_a_dead_letter_and_broker_topics_are_not_subscribed() -> None:
    result = decode("iot/node/01/firmware", {"x": 1})
    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.UNKNOWN_TOPIC
    assert "iot/node/#" in DECODER.subscriptions
    assert not any(sub.startswith("iot/broker") or sub == "iot/#" for sub in DECODER.subscriptions)


def test_malformed_telemetry_keeps_its_node_id() -> None:
    result = decode("iot/node/03/telemetry", b'{"sensors": {"temperature": 22.5}')
    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.MALFORMED_JSON
    assert (result.device_id, result.profile) == ("03", "iot-node")
