"""The Flask API test: the Flask/SQLite stack's REST API, replayed against a real fieldhub.

fieldhub runs as `fieldhub up` against the test's own Mosquitto, filled by real MQTT publishes of
the Flask firmware's exact payloads (QoS 1, retained). The requests replayed are the ones the
stack documents: the endpoints and bodies of its project presentation and the requests of the
stack's own request collection (`posting/api/*.posting.yaml` in its repository: the `internal_id`
filters, the `readingsFrom=2025-03` / `readingsTo=2025-03-09 11:00` range, the two POST bodies).
Answers keep the Flask app's field names; errors are 4xx JSON with a message, never 200
text/html or 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import MosquittoFactory
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all

GATEWAY = "3C:E9:0E:72:12:4C"
SENSOR_1 = "40:91:51:CB:A4:64"
SENSOR_2 = "E0:5A:1B:30:B3:38"
# The firmware's messages, byte for byte: uptime in ms as `timestamp`, a space after each comma.
GATEWAY_PAYLOADS = [
    b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":93387, "rssi":65}',
    b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":123390, "rssi":64}',
    b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":153392, "rssi":66}',
]
TEMPERATURE_PAYLOADS = [
    (SENSOR_1, b'{"macAddress":"40:91:51:CB:A4:64", "timestamp":50211, "temperature":21.4}'),
    (SENSOR_2, b'{"macAddress":"E0:5A:1B:30:B3:38", "timestamp":7001, "temperature":18.9}'),
]
DEVICE_KEYS = {"id", "internal_id", "mac_address", "chip", "info", "created_at"}
GATEWAY_ROW_KEYS = {"id", "device_id", "timestamp", "rssi", "received_time", "uptime_ms"}
TEMPERATURE_ROW_KEYS = {"id", "device_id", "timestamp", "temperature", "received_time", "uptime_ms"}
SEED_DATE = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"


@pytest.fixture
def fieldhub(mosquitto_factory: MosquittoFactory, tmp_path: Path) -> Iterator[FieldhubProcess]:
    """A fieldhub on a private broker, holding the firmware's MQTT messages."""
    broker = mosquitto_factory()
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=broker.url).start()
    publisher = connected_publisher(broker.url)
    publish_all(
        publisher,
        [(f"/readings/gateway/{GATEWAY}", p) for p in GATEWAY_PAYLOADS]
        + [(f"/readings/temperature/{mac}", p) for mac, p in TEMPERATURE_PAYLOADS],
        retain=True,
    )
    publisher.stop()
    wait_until(
        lambda: (
            len(_rows(fh, "gateway-readings", GATEWAY)) == 3
            and all(
                len(_rows(fh, "sensor-temperature-readings", m)) == 1
                for m, _ in TEMPERATURE_PAYLOADS
            )
        ),
        what="the firmware's messages to be stored",
    )
    yield fh
    assert fh.stop() == 0


def _rows(fh: FieldhubProcess, path: str, mac: str, **params: Any) -> list[dict[str, Any]]:
    response = fh.get(f"/api/{path}", macAddress=mac, **params)
    if response.status_code != 200:
        return []
    key = "gatewayReadings" if path == "gateway-readings" else "sensorTemperatureReadings"
    rows: list[dict[str, Any]] = response.json()[key]
    return rows


def _post(fh: FieldhubProcess, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{fh.base_url}/api/{path}", json=body, timeout=10.0)


def _assert_json_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """A 4xx in the Flask app's error shape, with the status in the body too."""
    assert response.status_code == status, (response.request.url, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["statusCode"] == status
    assert isinstance(body["error"], str)
    assert body["error"]
    assert isinstance(body["code"], str)
    assert body["code"]
    return body


def test_seed_requests_answer_with_the_flask_field_names(fieldhub: FieldhubProcess) -> None:
    """Every documented request, with the Flask app's JSON names and the right status codes."""
    fh = fieldhub

    # GET /api/devices: "Get all registered devices".
    response = fh.get("/api/devices")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"statusCode", "devices", "nextCursor"}
    assert body["statusCode"] == 200
    assert body["nextCursor"] is None
    devices = {d["mac_address"]: d for d in body["devices"]}
    assert set(devices) == {GATEWAY, SENSOR_1, SENSOR_2}
    for device in devices.values():
        assert set(device) == DEVICE_KEYS
        assert device["id"] == device["mac_address"]
        assert device["internal_id"] is None
        assert device["chip"] is None
        assert device["created_at"] is not None
    # The Flask pages pick gateways and sensors by a word in `info`.
    assert "GATEWAY" in devices[GATEWAY]["info"].upper()
    assert "TEMPERATURE" in devices[SENSOR_1]["info"].upper()
    assert "GATEWAY" not in devices[SENSOR_2]["info"].upper()

    # The collection's internal_id filters: fieldhub has no internal ids and says so.
    for ids in ("0", "0,4,6", "0,4,10"):
        _assert_json_error(fh.get("/api/devices", internal_id=ids), 422)

    # GET /api/gateway-readings?macAddress=3C:E9:0E:72:12:4C: newest first, the firmware's data.
    response = fh.get("/api/gateway-readings", macAddress=GATEWAY)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"statusCode", "gatewayReadings", "nextCursor"}
    assert body["statusCode"] == 200
    assert body["nextCursor"] is None
    rows = body["gatewayReadings"]
    assert [r["rssi"] for r in rows] == [66, 64, 65]
    assert [r["uptime_ms"] for r in rows] == [153392, 123390, 93387]
    for row in rows:
        assert set(row) == GATEWAY_ROW_KEYS
        assert row["device_id"] == GATEWAY
        assert isinstance(row["id"], int)
        # The firmware sends uptime, not a date: the reading's time is its arrival, as in Flask.
        assert row["timestamp"] == row["received_time"]
        assert row["timestamp"] >= "2020"
        assert len(row["timestamp"]) == 19
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)

    # The same with the collection's date range: the firmware's readings are from now, not 2025.
    ranged = fh.get(
        "/api/gateway-readings",
        macAddress=GATEWAY,
        readingsFrom="2025-03",
        readingsTo="2025-03-09 11:00",
    )
    assert ranged.status_code == 200
    assert ranged.json()["gatewayReadings"] == []

    # POST /api/gateway-readings with the collection's body: 201, through ingest, then readable.
    response = _post(
        fh,
        "gateway-readings",
        {"macAddress": GATEWAY, "timestamp": "2025-03-09 10:00:00", "rssi": 43},
    )
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    created = response.json()
    assert set(created) == {"statusCode", "device_id", "id"}
    assert created["statusCode"] == 201
    assert created["device_id"] == GATEWAY
    ranged = fh.get(
        "/api/gateway-readings",
        macAddress=GATEWAY,
        readingsFrom="2025-03",
        readingsTo="2025-03-09 11:00",
    ).json()["gatewayReadings"]
    assert len(ranged) == 1
    assert ranged[0]["id"] == created["id"]
    assert ranged[0]["timestamp"] == "2025-03-09 10:00:00"
    assert ranged[0]["rssi"] == 43
    assert ranged[0]["uptime_ms"] is None
    assert len(_rows(fh, "gateway-readings", GATEWAY)) == 4

    # GET and POST /api/sensor-temperature-readings, as in the collection.
    for mac, payload in TEMPERATURE_PAYLOADS:
        response = fh.get("/api/sensor-temperature-readings", macAddress=mac)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"statusCode", "sensorTemperatureReadings", "nextCursor"}
        (row,) = body["sensorTemperatureReadings"]
        assert set(row) == TEMPERATURE_ROW_KEYS
        assert row["device_id"] == mac
        assert f'"temperature":{row["temperature"]}'.encode() in payload
        assert f'"timestamp":{row["uptime_ms"]}'.encode() in payload
    response = _post(
        fh,
        "sensor-temperature-readings",
        {"macAddress": SENSOR_1, "timestamp": "2025-04-05 08:00:00", "temperature": 16.6},
    )
    assert response.status_code == 201
    assert response.json()["device_id"] == SENSOR_1
    rows = _rows(fh, "sensor-temperature-readings", SENSOR_1, readingsTo="2025-04-05 08:00:00")
    assert [(r["timestamp"], r["temperature"]) for r in rows] == [("2025-04-05 08:00:00", 16.6)]

    # The publish-test endpoints wrote random data; fieldhub answers 410 Gone, in JSON.
    for path in ("publish-gateway-test", "publish-temperature-test"):
        _assert_json_error(httpx.post(f"{fh.base_url}/api/{path}", timeout=10.0), 410)


def test_a_posted_reading_is_stored_as_an_mqtt_one(fieldhub: FieldhubProcess) -> None:
    """POSTing the firmware's own payload stores what the MQTT message stored: same metrics,
    same time rule, same profile; a resend with the same date lands once."""
    fh = fieldhub
    other = "3C:E9:0E:00:00:01"
    response = _post(fh, "gateway-readings", {"macAddress": other, "timestamp": 93387, "rssi": 65})
    assert response.status_code == 201
    native_posted = fh.get(f"/api/v1/devices/{other}").json()
    native_mqtt = fh.get(f"/api/v1/devices/{GATEWAY}").json()
    assert native_posted["profile"] == native_mqtt["profile"] == "readings"
    assert (
        {m["name"] for m in native_posted["metrics"]}
        == {m["name"] for m in native_mqtt["metrics"]}
        == {"rssi_percent", "uptime_ms"}
    )
    for device in (other, GATEWAY):
        for reading in fh.get(f"/api/v1/devices/{device}/readings").json()["data"]:
            # Uptime is no date: stored at the receive time, over MQTT and over HTTP alike.
            assert reading["ts"] == reading["received_at"]
    posted = _rows(fh, "gateway-readings", other)
    assert [(r["rssi"], r["uptime_ms"]) for r in posted] == [(65, 93387)]
    assert posted[0]["id"] == response.json()["id"]

    # A dated reading sent twice is one reading (the store's primary key), both answered 201.
    body = {"macAddress": other, "timestamp": "2025-03-09T10:00:00Z", "rssi": "44"}
    assert _post(fh, "gateway-readings", body).status_code == 201
    assert _post(fh, "gateway-readings", body).status_code == 201
    assert [r["rssi"] for r in _rows(fh, "gateway-readings", other)] == [65, 44]
    # Any MAC spelling finds the device.
    assert len(_rows(fh, "gateway-readings", other.lower().replace(":", ""))) == 2


def test_date_range_filters_compare_times_in_both_formats(fieldhub: FieldhubProcess) -> None:
    """Flask-format, partial and ISO 8601 bounds select the same readings; bounds are inclusive
    and a zone offset is honoured (the Flask app compared strings: an ISO `T` matched nothing)."""
    fh = fieldhub
    for date, temperature in (
        ("2025-03-08 23:59:59", 1.0),
        ("2025-03-09 00:00:00", 2.0),
        ("2025-03-09 10:00:00", 3.0),
        ("2025-03-09 10:00:30", 4.0),
        ("2025-03-10 00:00:00", 5.0),
    ):
        body = {"macAddress": SENSOR_2, "timestamp": date, "temperature": temperature}
        assert _post(fh, "sensor-temperature-readings", body).status_code == 201

    def temperatures(**params: str) -> list[float]:
        return [
            r["temperature"] for r in _rows(fh, "sensor-temperature-readings", SENSOR_2, **params)
        ]

    march_9 = [4.0, 3.0, 2.0]
    assert temperatures(readingsFrom="2025-03-09", readingsTo="2025-03-09 23:59:59") == march_9
    assert temperatures(readingsFrom="2025-03-09T00:00:00Z", readingsTo="2025-03-09T23:59:59Z") == (
        march_9
    )
    assert temperatures(
        readingsFrom="2025-03-09T01:00:00+01:00", readingsTo="2025-03-09T23:59:59.999999"
    ) == (march_9)
    # Inclusive at both ends, to the microsecond.
    assert temperatures(readingsFrom="2025-03-09 10:00:00", readingsTo="2025-03-09 10:00:00") == [
        3.0
    ]
    assert temperatures(
        readingsFrom="2025-03-09T10:00:00.000001Z", readingsTo="2025-03-09T10:00:30"
    ) == [4.0]
    # A partial date is the first instant of its period, like the Flask app's string compare.
    assert temperatures(readingsTo="2025-03-09") == [2.0, 1.0]
    assert temperatures(readingsFrom="2025-03-10") == [18.9, 5.0]
    assert temperatures(readingsFrom="2025") == [18.9, 5.0, 4.0, 3.0, 2.0, 1.0]
    # The firmware's MQTT reading arrived now: an ISO range around today finds it alone.
    assert temperatures(readingsFrom="2026-01-01T00:00:00Z") == [18.9]


def test_readings_come_in_pages(fieldhub: FieldhubProcess) -> None:
    """`limit` and `nextCursor` walk every reading once, newest first; without `limit` a small
    history comes whole with `nextCursor` null, as the Flask app's clients expect."""
    fh = fieldhub
    mac = "3C:E9:0E:00:00:02"
    for minute in range(7):
        body = {"macAddress": mac, "timestamp": f"2025-03-09 10:{minute:02d}:00", "rssi": minute}
        assert _post(fh, "gateway-readings", body).status_code == 201
    whole = fh.get("/api/gateway-readings", macAddress=mac).json()
    assert whole["nextCursor"] is None
    assert [r["rssi"] for r in whole["gatewayReadings"]] == [6, 5, 4, 3, 2, 1, 0]

    seen: list[int] = []
    pages = 0
    params: dict[str, Any] = {"macAddress": mac, "limit": 3, "readingsFrom": "2025-03-09 10:01"}
    while True:
        body = fh.get("/api/gateway-readings", **params).json()
        seen += [r["rssi"] for r in body["gatewayReadings"]]
        pages += 1
        if body["nextCursor"] is None:
            break
        params["cursor"] = body["nextCursor"]
    assert seen == [6, 5, 4, 3, 2, 1]
    assert pages == 2

    # Devices page the same way.
    first = fh.get("/api/devices", limit=2).json()
    assert len(first["devices"]) == 2
    assert first["nextCursor"] is not None
    rest = fh.get("/api/devices", limit=2, cursor=first["nextCursor"]).json()
    listed = [d["id"] for d in first["devices"] + rest["devices"]]
    assert listed == sorted(set(listed))
    assert mac in listed


def _chunks() -> Iterator[bytes]:
    yield b'{"macAddress": "3C:E9:0E:72:12:4C", '
    yield b'"rssi": 50}'


BAD_BODIES: list[tuple[str, bytes, int]] = [
    # (why, body, status): JSON that cannot be read is 400, a readable object that is wrong 422.
    ("malformed JSON", b'{"macAddress": "3C:E9:0E:72:12:4C", "rssi": ', 400),
    ("an array", b"[]", 400),
    ("a string", b'"3C:E9:0E:72:12:4C"', 400),
    ("empty", b"", 400),
    ("not UTF-8", b'{"macAddress": "\xff\xfe", "rssi": 5}', 400),
    ("an empty object", b"{}", 422),
    ("no rssi", b'{"macAddress": "3C:E9:0E:72:12:4C", "timestamp": "2025-03-09 10:00:00"}', 422),
    ("no macAddress", b'{"rssi": 50}', 422),
    ("rssi not a number", b'{"macAddress": "3C:E9:0E:72:12:4C", "rssi": "strong"}', 422),
    ("rssi a boolean", b'{"macAddress": "3C:E9:0E:72:12:4C", "rssi": true}', 422),
    ("rssi in dBm", b'{"macAddress": "3C:E9:0E:72:12:4C", "rssi": -51}', 422),
    ("rssi over 100", b'{"macAddress": "3C:E9:0E:72:12:4C", "rssi": 101}', 422),
    ("rssi null", b'{"macAddress": "3C:E9:0E:72:12:4C", "rssi": null}', 422),
    ("unknown field", b'{"macAddress": "3C:E9:0E:72:12:4C", "rssi": 5, "snr": 3}', 422),
    ("macAddress a number", b'{"macAddress": 12, "rssi": 5}', 422),
    ("macAddress not an id", b'{"macAddress": "no/such mac", "rssi": 5}', 422),
    ("bad date", b'{"macAddress": "3C:E9:0E:72:12:4C", "timestamp": "2025-02-30", "rssi": 5}', 422),
    ("date as text", b'{"macAddress": "3C:E9:0E:72:12:4C", "timestamp": "now", "rssi": 5}', 422),
    (
        "timestamp a boolean",
        b'{"macAddress": "3C:E9:0E:72:12:4C", "timestamp": true, "rssi": 5}',
        422,
    ),
]


def test_bad_requests_are_4xx_json_with_a_message(fieldhub: FieldhubProcess) -> None:
    """Every bad request gets a 4xx in the Flask error shape, never a 500 or text/html, and
    stores nothing."""
    fh = fieldhub
    url = f"{fh.base_url}/api/gateway-readings"
    json_header = {"content-type": "application/json"}
    for why, body, status in BAD_BODIES:
        response = httpx.post(url, content=body, headers=json_header, timeout=10.0)
        assert response.status_code == status, why
        _assert_json_error(response, status)

    # The body's type: JSON only (the Flask app answered 200 to anything else).
    good = b'{"macAddress": "3C:E9:0E:72:12:4C", "rssi": 50}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        response = httpx.post(url, content=good, headers=headers, timeout=10.0)
        _assert_json_error(response, 415)
    _assert_json_error(httpx.post(url, content=_chunks(), headers=json_header, timeout=10.0), 411)
    oversize = b'{"macAddress": "3C:E9:0E:72:12:4C", "rssi": 5, "x": "' + b"a" * 70_000 + b'"}'
    _assert_json_error(httpx.post(url, content=oversize, headers=json_header, timeout=10.0), 413)

    # A date the decoder refuses (before 2000) is a 422 naming it, kept in dead letters.
    response = _post(
        fh,
        "gateway-readings",
        {"macAddress": GATEWAY, "timestamp": "1990-01-01 00:00:00", "rssi": 5},
    )
    assert "1990-01-01 00:00:00" in _assert_json_error(response, 422)["error"]
    letters = fh.get("/api/v1/dead-letters", reason="absurd_timestamp").json()["data"]
    assert [d["topic"] for d in letters] == [f"/readings/gateway/{GATEWAY}"]

    # Query parameters.
    bad_gets: list[tuple[str, dict[str, Any], int]] = [
        ("gateway-readings", {}, 400),
        ("sensor-temperature-readings", {}, 400),
        ("gateway-readings", {"macAddress": "00:11:22:33:44:55"}, 404),
        ("sensor-temperature-readings", {"macAddress": "00:11:22:33:44:55"}, 404),
        ("gateway-readings", {"macAddress": "no/such mac"}, 400),
        ("gateway-readings", {"macAddress": GATEWAY, "readingsFrom": "yesterday"}, 400),
        ("gateway-readings", {"macAddress": GATEWAY, "readingsTo": "2025-02-30"}, 400),
        ("gateway-readings", {"macAddress": GATEWAY, "readingsTo": "2025-03-09 25:00"}, 400),
        (
            "gateway-readings",
            {"macAddress": GATEWAY, "readingsFrom": "2025-03-10", "readingsTo": "2025-03-09"},
            400,
        ),
        ("gateway-readings", {"macAddress": GATEWAY, "limit": 0}, 400),
        ("gateway-readings", {"macAddress": GATEWAY, "limit": 10_001}, 400),
        ("gateway-readings", {"macAddress": GATEWAY, "limit": "all"}, 400),
        ("gateway-readings", {"macAddress": GATEWAY, "cursor": "not-a-cursor"}, 400),
        ("devices", {"cursor": "not-a-cursor"}, 400),
        ("devices", {"internal_id": "0,4,10"}, 422),
    ]
    for path, params, status in bad_gets:
        body = _assert_json_error(fh.get(f"/api/{path}", **params), status)
        if status == 404:
            assert "not found" in body["error"]

    # None of it stored a reading.
    assert len(_rows(fh, "gateway-readings", GATEWAY)) == 3
