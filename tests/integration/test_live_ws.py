"""`/api/v1/live` and the dashboard's HTTP side against a real `fieldhub up` and broker.

A WebSocket client (the `websockets` library) subscribes as docs/live.md describes, real MQTT
devices publish, and what arrives live is checked against what the HTTP API reads back from the
store. Also here: GET /api/v1/system, the presence history endpoint and the dashboard pages.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from websockets.sync.client import ClientConnection, connect

from fieldhub import __version__
from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.sim.native import NativeDevice
from fieldhub.status import SystemStatus
from fieldhub.web import pages
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, now_ms, publish_all

Frame = dict[str, Any]
# How long a frame may take to arrive: commits take milliseconds, the coalescing window and the
# stats period are at most a second; this only bounds how long a broken test hangs.
FRAME_TIMEOUT_S = 20.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(iso: str) -> int:
    """An API time (ISO 8601 with microseconds and Z) as exact epoch microseconds."""
    return (datetime.fromisoformat(iso) - _EPOCH) // timedelta(microseconds=1)


def unique_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def fh(
    mosquitto: MosquittoProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FieldhubProcess]:
    process = FieldhubProcess(
        data_dir=tmp_path_factory.mktemp("live-ws"), mqtt_url=mosquitto.url
    ).start()
    yield process
    assert process.stop() == 0


class LiveClient:
    """One viewer of /api/v1/live, reading frames with a deadline."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[Frame] = []

    def send(self, body: object) -> None:
        self.ws.send(body if isinstance(body, str | bytes) else orjson.dumps(body).decode())

    def next(self, timeout_s: float = FRAME_TIMEOUT_S) -> Frame:
        frame: Frame = orjson.loads(self.ws.recv(timeout=timeout_s))
        self.seen.append(frame)
        return frame

    def wait_for(
        self, predicate: Callable[[Frame], bool], what: str, timeout_s: float = FRAME_TIMEOUT_S
    ) -> Frame:
        """The first frame matching `predicate`; frames before it stay in `seen`."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                frame = self.next(remaining)
            except TimeoutError:
                break
            if predicate(frame):
                return frame
        raise AssertionError(f"no {what} within {timeout_s} s; frames seen: {self.seen[-10:]}")

    def subscribe(self, **fields: Any) -> Frame:
        self.send({"op": "subscribe", **fields})
        return self.wait_for(lambda f: f["type"] in ("subscribed", "error"), "subscribe answer")


@contextmanager
def live_client(fh: FieldhubProcess) -> Iterator[LiveClient]:
    """A connected viewer, closed on exit (no proxy from the environment: loopback only)."""
    url = fh.base_url.replace("http://", "ws://") + "/api/v1/live"
    with connect(url, proxy=None, open_timeout=10) as ws:
        yield LiveClient(ws)


def native_device(mosquitto: MosquittoProcess, device_id: str) -> NativeDevice:
    device = NativeDevice(endpoint=parse_mqtt_url(mosquitto.url), device_id=device_id)
    device.start()
    assert device.wait_connected(10), f"{device_id} could not connect"
    return device


def device_json(fh: FieldhubProcess, device_id: str) -> dict[str, Any] | None:
    response = fh.get(f"/api/v1/devices/{device_id}")
    body: dict[str, Any] | None = response.json() if response.status_code == 200 else None
    return body


def wait_presence(fh: FieldhubProcess, device_id: str, state: str) -> dict[str, Any]:
    """The device's API body once its presence is `state`."""

    def in_state() -> dict[str, Any] | None:
        body = device_json(fh, device_id)
        return body if body is not None and body["presence"] == state else None

    found = wait_until(in_state, what=f"{device_id} {state} in the API")
    assert found is not None
    return found


def readings_of(fh: FieldhubProcess, device_id: str, **params: Any) -> list[dict[str, Any]]:
    response = fh.get(f"/api/v1/devices/{device_id}/readings", limit=10_000, **params)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


# -- the WebSocket --------------------------------------------------------------------------------


def test_hello_on_connect(fh: FieldhubProcess) -> None:
    before = time.time_ns() // 1_000
    with live_client(fh) as live:
        hello = live.next()
    after = time.time_ns() // 1_000
    assert hello["type"] == "hello"
    assert hello["version"] == __version__
    assert before - 1_000_000 <= hello["server_time"] <= after + 1_000_000


def test_subscribe_is_confirmed_with_canonical_ids(fh: FieldhubProcess) -> None:
    with live_client(fh) as live:
        assert live.next()["type"] == "hello"
        assert live.subscribe() == {
            "type": "subscribed",
            "devices": None,
            "metrics": None,
            "events": ["devices", "presence", "readings"],
            "min_interval_ms": 250,
        }
        # A new subscribe replaces the previous one.
        assert live.subscribe(
            devices=["a4cf12b3c4d5", "node-x", "A4-CF-12-B3-C4-D5"],
            metrics=["temperature"],
            events=["readings", "presence"],
            min_interval_ms=500,
        ) == {
            "type": "subscribed",
            "devices": ["A4:CF:12:B3:C4:D5", "node-x"],
            "metrics": ["temperature"],
            "events": ["presence", "readings"],
            "min_interval_ms": 500,
        }


def test_bad_frames_get_an_error_and_the_connection_stays_usable(fh: FieldhubProcess) -> None:
    bad: list[tuple[str | bytes, str, str]] = [
        ("this is not json", "malformed_json", "not JSON"),
        (b"\xff\xfe binary", "malformed_json", "not JSON"),
        ('{"op": "unsubscribe"}', "invalid_subscription", "op"),
        ('{"op": "subscribe", "min_interval_ms": 50}', "invalid_subscription", "min_interval_ms"),
        ('{"op": "subscribe", "min_interval_ms": true}', "invalid_subscription", "min_interval_ms"),
        ('{"op": "subscribe", "events": ["all"]}', "invalid_subscription", "events"),
        ('{"op": "subscribe", "devices": ["a b"]}', "invalid_subscription", "devices"),
        ('{"op": "subscribe", "extra": 1}', "invalid_subscription", "extra"),
        ("[1, 2]", "invalid_subscription", "frame"),
        ('{"op": "subscribe", "metrics": ["' + "m" * 70_000 + '"]}', "frame_too_large", "65536"),
    ]
    with live_client(fh) as live:
        assert live.next()["type"] == "hello"
        for raw, code, mentioned in bad:
            live.send(raw)
            frame = live.next()
            assert frame["type"] == "error", (raw[:60], frame)
            assert frame["error"]["code"] == code, (raw[:60], frame)
            assert mentioned in frame["error"]["message"], (raw[:60], frame)
        assert live.subscribe(events=["presence"])["type"] == "subscribed"


def test_a_native_devices_readings_arrive_as_stored(
    fh: FieldhubProcess, mosquitto: MosquittoProcess
) -> None:
    """[device, metric, ts_us, value] live equals what GET .../readings returns afterwards."""
    device_id = unique_id("live-rd")
    device = native_device(mosquitto, device_id)
    try:
        with live_client(fh) as live:
            live.subscribe(devices=[device_id], events=["readings"])
            future = device.publish_telemetry()
            assert future is not None
            future.result(timeout=10)
            frame = live.wait_for(lambda f: f["type"] == "readings", "a readings frame")
    finally:
        device.stop()
    data = frame["data"]
    assert {entry[0] for entry in data} == {device_id}
    assert {entry[1] for entry in data} >= {"temperature", "humidity", "rssi", "seq"}
    stored = {(r["metric"], epoch_us(r["ts"])): r["value"] for r in readings_of(fh, device_id)}
    assert len(stored) == len(data)  # one message: every reading sent at once
    for _, metric, ts_us, value in data:
        assert isinstance(ts_us, int)
        assert stored[(metric, ts_us)] == value


def test_readings_are_coalesced_and_the_newest_is_sent_last(
    fh: FieldhubProcess, mosquitto: MosquittoProcess
) -> None:
    """20 readings of one metric within 200 ms (device time), published back to back: the
    viewer gets at most two updates of the series (the first at once, the newest at the end of
    the window); the store keeps all 20. A 1 s window keeps the test independent of how fast
    this machine delivers the 20 messages."""
    device_id = unique_id("live-co")
    topic = f"devices/{device_id}/telemetry"
    base_ms = now_ms()
    sent = [(base_ms + 10 * n, round(20 + 0.25 * n, 2)) for n in range(20)]
    publisher = connected_publisher(mosquitto.url)
    try:
        with live_client(fh) as live:
            live.subscribe(
                devices=[device_id],
                metrics=["temperature"],
                events=["readings"],
                min_interval_ms=1_000,
            )
            publish_all(
                publisher,
                [
                    (topic, orjson.dumps({"ts": ts, "temperature": value, "seq": n}))
                    for n, (ts, value) in enumerate(sent)
                ],
            )
            newest = [device_id, "temperature", sent[-1][0] * 1_000, sent[-1][1]]
            live.wait_for(lambda f: f["type"] == "readings" and newest in f["data"], "newest")
    finally:
        publisher.stop()
    updates = [entry for f in live.seen if f["type"] == "readings" for entry in f["data"]]
    assert all(entry[:2] == [device_id, "temperature"] for entry in updates)  # seq filtered out
    assert 1 <= len(updates) <= 2, updates
    assert updates[-1] == newest
    assert {(u[2], u[3]) for u in updates} <= {(ts * 1_000, v) for ts, v in sent}
    stored = readings_of(fh, device_id, metric="temperature")
    assert [(epoch_us(r["ts"]), r["value"]) for r in stored] == [(t * 1_000, v) for t, v in sent]


def test_stats_frames_have_the_shape_of_get_system(fh: FieldhubProcess) -> None:
    with live_client(fh) as live:
        live.subscribe(devices=[], events=["stats"])
        frame = live.wait_for(lambda f: f["type"] == "stats", "a stats frame")
    body = fh.get("/api/v1/system").json()

    def keys(value: object) -> object:
        if isinstance(value, dict):
            return {k: keys(v) for k, v in value.items()}
        return None

    assert keys(frame["data"]) == keys(body)
    SystemStatus.model_validate(frame["data"])
    assert frame["data"]["live"]["viewers"] >= 1


def test_presence_offline_from_the_will_reaches_presence_subscribers(
    fh: FieldhubProcess, mosquitto: MosquittoProcess
) -> None:
    device_id = unique_id("live-pr")
    device = native_device(mosquitto, device_id)
    try:
        wait_presence(fh, device_id, "online")
        with live_client(fh) as live:
            live.subscribe(devices=[device_id], events=["presence"])
            device.crash()  # no DISCONNECT: the broker publishes the retained `offline` will
            frame = live.wait_for(
                lambda f: f["type"] == "presence" and f["state"] == "offline", "offline"
            )
    finally:
        device.stop()
    assert frame["device"] == device_id
    stored = wait_presence(fh, device_id, "offline")
    assert frame["since"] == epoch_us(stored["presence_since"])


def test_dead_letters_reach_dead_letter_subscribers_with_their_reason(
    fh: FieldhubProcess, mosquitto: MosquittoProcess
) -> None:
    device_id = unique_id("live-dl")
    topic = f"devices/{device_id}/telemetry"
    payload = b'{"temperature": 21.5,'
    publisher = connected_publisher(mosquitto.url)
    try:
        with live_client(fh) as live:
            live.subscribe(events=["dead_letters"])
            publish_all(publisher, [(topic, payload)])
            frame = live.wait_for(
                lambda f: (
                    f["type"] == "dead_letters" and any(i["topic"] == topic for i in f["items"])
                ),
                "the dead letter",
            )
    finally:
        publisher.stop()
    [item] = [i for i in frame["items"] if i["topic"] == topic]
    assert item["reason"] == "malformed_json"
    assert item["device"] == device_id
    assert item["profile"] == "native"
    assert item["size"] == len(payload)
    assert item["preview"] == payload.decode()
    assert item["detail"]
    assert frame["suppressed"] == 0
    [stored] = fh.get("/api/v1/dead-letters", device=device_id).json()["data"]
    assert (stored["reason"], stored["detail"]) == (item["reason"], item["detail"])
    assert epoch_us(stored["received_at"]) == item["received"]


def test_viewers_are_counted_while_connected(fh: FieldhubProcess) -> None:
    def live_status() -> dict[str, Any]:
        return fh.get("/api/v1/system").json()["live"]  # type: ignore[no-any-return]

    wait_until(lambda: live_status()["viewers"] == 0, what="no viewers left from other tests")
    with live_client(fh) as a, live_client(fh) as b:
        a.subscribe(events=["presence"])
        b.subscribe(events=["presence"])
        status = live_status()
        assert status["viewers"] == 2
        assert status["subscriptions"] == 1  # equal subscriptions share one group
    wait_until(
        lambda: (s := live_status())["viewers"] == 0 and s["subscriptions"] == 0,
        what="the viewers and their group gone after disconnecting",
    )


# -- HTTP: system status, presence history --------------------------------------------------------


def test_get_system_returns_the_documented_fields(
    fh: FieldhubProcess, mosquitto: MosquittoProcess
) -> None:
    response = fh.get("/api/v1/system")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"time_us", "uptime_s", "fleet", "ingest", "live", "broker", "limits"}
    dead = body["limits"]["dead_letters"]
    assert dead["days"] == {"*": 30.0}
    assert dead["max_bytes"] == 100 * 2**20
    assert dead["payload_max_bytes"] == 64 * 1024
    assert body["limits"]["store_unwritable_503_s"] == 60.0
    assert body["limits"]["messages"]["json_max_depth"] == 32
    assert body["limits"]["messages"]["device_id_max_chars"] == 128
    assert set(body["fleet"]) == {"devices", "online", "offline", "stale"}
    assert set(body["ingest"]) == {
        "messages_per_s",
        "readings_per_s",
        "batches_per_s",
        "commit_ms_mean",
        "queue_depth",
        "queue_high_water",
        "linger_ms",
        "backpressure_waits",
        "write_errors",
        "dead_letters_last_hour",
    }
    assert set(body["live"]) == {
        "viewers",
        "subscriptions",
        "dropped_frames",
        "bus_dropped_events",
        "bus_backlog",
    }
    assert body["broker"] == {
        "kind": "external",
        "url": mosquitto.url,
        "connected": True,
        "running": None,
        "restarts": None,
        "problem": None,
    }
    SystemStatus.model_validate(body)
    assert abs(body["time_us"] - time.time_ns() // 1_000) < 60_000_000
    assert body["uptime_s"] >= 0
    assert body["ingest"]["linger_ms"] in (5.0, 100.0)
    # The openapi document describes the endpoint.
    spec = fh.get("/openapi.json").json()
    assert "/api/v1/system" in spec["paths"]


def test_dead_letters_last_hour_counts_new_dead_letters(
    fh: FieldhubProcess, mosquitto: MosquittoProcess
) -> None:
    def count() -> int:
        return int(fh.get("/api/v1/system").json()["ingest"]["dead_letters_last_hour"])

    before = count()
    publisher = connected_publisher(mosquitto.url)
    try:
        topic = f"devices/{unique_id('sys-dl')}/telemetry"
        publish_all(publisher, [(topic, b"[1, 2]"), (topic, b"")])
    finally:
        publisher.stop()
    wait_until(lambda: count() >= before + 2, what="two more dead letters in the last hour")


def test_presence_history_endpoint(fh: FieldhubProcess, mosquitto: MosquittoProcess) -> None:
    device_id = unique_id("live-ph")
    device = native_device(mosquitto, device_id)
    wait_presence(fh, device_id, "online")
    assert device.stop(), "the broker acknowledged the retained offline"
    offline = wait_presence(fh, device_id, "offline")

    response = fh.get(f"/api/v1/devices/{device_id}/presence")
    assert response.status_code == 200
    body = response.json()
    assert body["device_id"] == device_id
    assert [e["state"] for e in body["data"]] == ["online", "offline"]
    online_us, offline_us = (epoch_us(e["ts"]) for e in body["data"])
    assert online_us < offline_us == epoch_us(offline["presence_since"])

    # A window starting after the online: that change is the state it opens in.
    opened = fh.get(f"/api/v1/devices/{device_id}/presence", start=str(online_us + 1)).json()
    assert opened["data"] == body["data"]
    # A window ending before the offline: only the online.
    early = fh.get(
        f"/api/v1/devices/{device_id}/presence", start=str(online_us), end=str(offline_us)
    ).json()
    assert [e["state"] for e in early["data"]] == ["online"]


def test_presence_history_errors(fh: FieldhubProcess) -> None:
    missing = fh.get(f"/api/v1/devices/{unique_id('nobody')}/presence")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    reversed_range = fh.get(
        "/api/v1/devices/anyone/presence", start="2024-01-02T00:00:00Z", end="2024-01-01T00:00:00Z"
    )
    assert reversed_range.status_code == 422
    assert reversed_range.json()["error"]["code"] == "invalid_parameter"
    empty_range = fh.get(
        "/api/v1/devices/anyone/presence", start="2024-01-01T00:00:00Z", end="2024-01-01T00:00:00Z"
    )
    assert empty_range.status_code == 422


# -- pages ----------------------------------------------------------------------------------------


def is_html(response: httpx.Response) -> bool:
    return response.headers["content-type"].startswith("text/html") and "<html" in response.text


def test_dashboard_pages_render(fh: FieldhubProcess, mosquitto: MosquittoProcess) -> None:
    device_id = unique_id("live-pg")
    publisher = connected_publisher(mosquitto.url)
    try:
        publish_all(
            publisher,
            [
                (f"devices/{device_id}/telemetry", b'{"temperature": 21.25}'),
                (f"devices/{device_id}/telemetry", b"{broken"),
            ],
        )
    finally:
        publisher.stop()
    wait_until(lambda: device_json(fh, device_id), what="the device")
    wait_until(
        lambda: fh.get("/api/v1/dead-letters", device=device_id).json()["data"],
        what="its dead letter",
    )

    fleet = fh.get("/", search=device_id)
    assert fleet.status_code == 200
    assert is_html(fleet)
    assert device_id in fleet.text
    assert "21.25" in fleet.text

    for path in ("/", "/dead-letters", "/system", "/ml", f"/devices/{device_id}"):
        response = fh.get(path)
        assert response.status_code == 200, (path, response.text[:500])
        assert is_html(response), path
    assert device_id in fh.get(f"/devices/{device_id}").text
    assert device_id in fh.get("/dead-letters", device=device_id).text
    # The dashboard's ES modules (static/*.js, one per page and the ones they share): each is
    # served, and the pages' import map gives each its versioned URL (templates/base.html).
    modules = sorted(path.name for path in (pages.HERE / "static").glob("*.js"))
    assert {"fleet.js", "device.js", "dead_letters.js", "system.js"} <= set(modules)
    html = fh.get("/").text
    for name in modules:
        assert fh.get(f"/static/{name}").status_code == 200, name
        assert f'"/static/{name}": "/static/{name}?v={__version__}"' in html, name


def test_dashboard_page_errors(fh: FieldhubProcess) -> None:
    unknown = fh.get(f"/devices/{unique_id('ghost')}")
    assert unknown.status_code == 404
    assert is_html(unknown)
    assert fh.get("/", presence="sleeping").status_code == 422
    assert fh.get("/", presence="").status_code == 200
    for state in ("online", "offline", "stale"):
        assert fh.get("/", presence=state).status_code == 200
