"""fieldhub answering the window-control backbone's inference requests, on a real Mosquitto.

The backbone (`mqtt_backbone/internal/services/inference_service.go`) publishes
`ml/inference/request/{id}` and reads `window/{id}/control` into `models.InferenceResponse`
(`internal/models/sensor.go`). `go_decode` below is that struct's `encoding/json` decoding,
written from the source: a field of the wrong JSON type is an error and the backbone drops the
whole message (so `features_used` must be an object, `timestamp` an RFC 3339 string).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldhub.broker import MosquittoProcess
from support.commands import TopicRecorder, recorder
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all

# Go's time.Time UnmarshalJSON: RFC 3339 with optional fractional seconds and a zone.
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
# Guards that let every answer through: the test is about the protocol, not the guards.
OPEN_GUARDS = {"min_confidence": 0.0, "deadband": 0, "min_interval_s": 0, "max_step": 100}
# The backbone still runs and asks: fieldhub's own trigger is off for its devices.
ANSWER_ONLY = {"guards": OPEN_GUARDS, "trigger": {"enabled": False}}


def go_decode(payload: bytes) -> dict[str, Any]:
    """encoding/json into models.InferenceResponse; raises ValueError where Go errors."""
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("cannot unmarshal non-object into InferenceResponse")
    # Go matches keys case-insensitively; fieldhub's are the exact json tags.
    fields = {"device_id": str, "timestamp": str, "position": float, "confidence": float}
    decoded: dict[str, Any] = {}
    for key, kind in fields.items():
        value = data.get(key)
        if value is None:
            decoded[key] = None  # a zero value in Go; the backbone then acts on garbage
            continue
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"cannot unmarshal {type(value).__name__} into float64 {key}")
        elif not isinstance(value, str):
            raise ValueError(f"cannot unmarshal {type(value).__name__} into {key}")
        decoded[key] = value
    if not RFC3339.match(decoded["timestamp"] or ""):
        raise ValueError(f"parsing time {decoded['timestamp']!r} as RFC 3339")
    features = data.get("features_used")
    if features is not None and not isinstance(features, dict):
        raise ValueError("cannot unmarshal array into map[string]interface {}")
    decoded["features_used"] = features
    return decoded


@pytest.fixture(scope="module")
def fieldhub(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoProcess
) -> Iterator[FieldhubProcess]:
    fh = FieldhubProcess(
        data_dir=tmp_path_factory.mktemp("ml-backbone"),
        mqtt_url=mosquitto.url,
        env={"FIELDHUB_ML_MODE": "act"},
    )
    fh.start()
    yield fh
    fh.stop()


def sensor_device(mosquitto: MosquittoProcess, fh: FieldhubProcess) -> str:
    """A window-control stack node that has reported once (so fieldhub knows how to reach it),
    with guards open so every decision moves the window."""
    device_id = f"esp32_{uuid.uuid4().hex[:6]}"
    answer = httpx.put(
        f"{fh.base_url}/api/v1/ml/devices/{device_id}", json=ANSWER_ONLY, timeout=10.0
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["configured"] is True
    publisher = connected_publisher(mosquitto.url)
    try:
        publish_all(
            publisher,
            [
                (f"sensor/{device_id}/temperature", b"24.5"),
                (f"sensor/{device_id}/humidity", b"55.0"),
            ],
        )
    finally:
        publisher.stop()

    def known() -> bool:
        found = fh.get(f"/api/v1/devices/{device_id}")
        return found.status_code == 200 and found.json()["presence"] == "online"

    wait_until(known, what=f"{device_id} to be online")
    return device_id


def request(device_id: str, **features: Any) -> bytes:
    """The backbone's models.InferenceRequest, as Go marshals it (RFC 3339 with nanoseconds)."""
    body: dict[str, Any] = {
        "device_id": device_id,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "temperature": 27.5,
        "humidity": 61.0,
        "sound_volume": -38.7,
    }
    body.update(features)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def publish_request(mosquitto: MosquittoProcess, device_id: str, payload: bytes) -> None:
    publisher = connected_publisher(mosquitto.url)
    try:
        publish_all(publisher, [(f"ml/inference/request/{device_id}", payload)])
    finally:
        publisher.stop()


def decisions(fh: FieldhubProcess, device_id: str) -> list[dict[str, Any]]:
    answer = fh.get("/api/v1/ml/decisions", device=device_id)
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()["data"]
    return rows


def test_a_request_gets_exactly_one_answer_in_the_backbones_format(
    mosquitto: MosquittoProcess, fieldhub: FieldhubProcess
) -> None:
    device_id = sensor_device(mosquitto, fieldhub)
    with ExitStack() as closing:
        wire: TopicRecorder = recorder(mosquitto.url, f"window/{device_id}/control", closing)
        publish_request(mosquitto, device_id, request(device_id))
        wait_until(wire.messages, what="an answer on the control topic")
        # A second request a moment later is the same moment: it moves nothing.
        publish_request(mosquitto, device_id, request(device_id, temperature=29.0))
        wait_until(lambda: len(decisions(fieldhub, device_id)) == 2, what="both decisions")
        time.sleep(0.5)
        [(_, payload)] = wire.messages()

    answer = go_decode(payload)
    assert answer["device_id"] == device_id
    assert 0 <= answer["position"] <= 100
    assert 0 <= answer["confidence"] <= 1
    assert answer["features_used"] == {"temperature": 27.5, "humidity": 61.0, "sound_volume": -38.7}
    assert list(json.loads(payload)) == [
        "device_id",
        "timestamp",
        "position",
        "confidence",
        "features_used",
    ]

    second, first = decisions(fieldhub, device_id)
    assert (first["trigger"], first["reason"], first["outcome"]) == (
        "request",
        "request",
        "actuated",
    )
    assert first["target_position"] == answer["position"]
    assert first["confidence"] == pytest.approx(answer["confidence"], abs=1e-4)
    assert first["model"] == "window"
    assert first["model_version"] >= 1
    assert first["request"]["temperature"] == 27.5
    assert next(v["guard"] for v in first["verdicts"]) == "enabled"
    assert second["outcome"] == "refused"
    assert second["verdicts"][0]["guard"] == "one_at_a_time"

    # The answer is a tracked command: the node's next reading shows it arrived.
    command = fieldhub.get(f"/api/v1/devices/{device_id}/commands/{first['command_id']}").json()
    assert command["name"] == "set_window"
    publisher = connected_publisher(mosquitto.url)
    try:
        publish_all(publisher, [(f"sensor/{device_id}/temperature", b"24.4")])
    finally:
        publisher.stop()

    def succeeded() -> bool:
        path = f"/api/v1/devices/{device_id}/commands/{first['command_id']}"
        return bool(fieldhub.get(path).json()["state"] == "succeeded")

    wait_until(succeeded, what="the window command to succeed")


@pytest.mark.parametrize(
    ("features", "reason"),
    [
        ({"sound_volume": ...}, "missing:sound_volume"),
        ({"humidity": 150.0}, "out_of_range:humidity"),
        ({"temperature": "hot"}, "missing:temperature"),
    ],
)
def test_a_request_with_a_bad_feature_gets_no_answer_and_is_counted(
    mosquitto: MosquittoProcess,
    fieldhub: FieldhubProcess,
    features: dict[str, Any],
    reason: str,
) -> None:
    device_id = sensor_device(mosquitto, fieldhub)
    counted = fieldhub.metric("fieldhub_ml_refused_inputs_total", {"reason": reason})
    with ExitStack() as closing:
        wire = recorder(mosquitto.url, f"window/{device_id}/control", closing)
        publish_request(mosquitto, device_id, request(device_id, **features))
        wait_until(lambda: decisions(fieldhub, device_id), what="the decision on record")
        time.sleep(0.5)
        assert wire.messages() == []
    [decision] = decisions(fieldhub, device_id)
    assert decision["outcome"] == "fallback"  # the default fallback: hold
    assert decision["target_position"] is None
    inputs = next(v for v in decision["verdicts"] if v["guard"] == "inputs")
    assert inputs["ok"] is False
    assert reason in inputs["detail"]
    after = fieldhub.metric("fieldhub_ml_refused_inputs_total", {"reason": reason})
    assert after == counted + 1


def test_a_payload_that_is_not_an_object_is_a_dead_letter(
    mosquitto: MosquittoProcess, fieldhub: FieldhubProcess, tmp_path: Path
) -> None:
    device_id = f"esp32_{uuid.uuid4().hex[:6]}"
    publish_request(mosquitto, device_id, b"[27.5, 61, -38.7]")

    def dead() -> list[dict[str, Any]]:
        answer = fieldhub.get("/api/v1/dead-letters", device=device_id)
        rows: list[dict[str, Any]] = answer.json()["data"] if answer.status_code == 200 else []
        return rows

    wait_until(dead, what="the dead letter")
    assert dead()[0]["reason"] == "not_an_object"
    assert decisions(fieldhub, device_id) == []
