"""Every kind of bad input lands in dead letters with its reason; the service keeps running."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import httpx
import pytest

from fieldhub.broker import MosquittoProcess
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all

PREFIX = f"bad{uuid.uuid4().hex[:6]}"
MAC = "3C:E9:0E:AB:CD:EF"

# (topic, payload, expected reason)
BAD_INPUTS: list[tuple[str, bytes, str]] = [
    (f"devices/{PREFIX}-json/telemetry", b'{"temperature": 21.5,', "malformed_json"),
    (f"devices/{PREFIX}-empty/telemetry", b"", "empty_payload"),
    (f"devices/{PREFIX}-utf8/telemetry", b'{"t": "\xff\xfe"}', "not_utf8"),
    (f"devices/{PREFIX}-array/telemetry", b"[1, 2, 3]", "not_an_object"),
    (f"devices/{PREFIX}-nan/telemetry", b'{"temperature": NaN}', "non_finite_number"),
    (f"devices/{PREFIX}-inf/telemetry", b'{"temperature": Infinity}', "non_finite_number"),
    (
        f"/readings/gateway/{MAC}",
        b'{"macAddress":"' + MAC.encode() + b'", "timestamp":1, "rssi":"strong"}',
        "expected_number",
    ),
    (
        f"devices/{PREFIX}-values/telemetry",
        b'{"ts": 1795000000000, "values": {"t": "warm"}}',
        "expected_number",
    ),
    (f"devices/{PREFIX}-topic/nonsense", b'{"t": 1}', "unknown_topic"),
    (f"devices/{PREFIX}-future/telemetry", b'{"ts": 99999999999999, "t": 1}', "absurd_timestamp"),
    (
        f"devices/{PREFIX}-iso/telemetry",
        b'{"ts": "1970-01-01T00:00:00Z", "t": 1}',
        "absurd_timestamp",
    ),
    (f"devices/{PREFIX}-big/telemetry", b'{"t": "' + b"x" * 70_000 + b'"}', "oversize_payload"),
    (f"devices/{PREFIX} bad id/telemetry", b'{"t": 1}', "bad_device_id"),
    (f"devices/{PREFIX}-scalar/telemetry", b"42", "not_an_object"),
    (f"devices/{PREFIX}-nothing/telemetry", b"{}", "no_readings"),
    # Where a RecursionError made internal_error (~990-1,024 levels) and past orjson's limit.
    (f"devices/{PREFIX}-deep/telemetry", b'{"a":' * 1000 + b"1" + b"}" * 1000, "too_deep"),
    (f"devices/{PREFIX}-deeper/telemetry", b"[" * 2000 + b"]" * 2000, "too_deep"),
    # `..` registered as a device before ids of dots alone were refused.
    ("devices/../telemetry", b'{"t": 1}', "bad_device_id"),
]


@pytest.fixture(scope="module")
def fieldhub(
    mosquitto: MosquittoProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FieldhubProcess]:
    fh = FieldhubProcess(
        data_dir=tmp_path_factory.mktemp("bad-input"), mqtt_url=mosquitto.url
    ).start()
    yield fh
    fh.stop()


def _dead_letters(fh: FieldhubProcess) -> list[dict[str, object]]:
    return list(fh.get("/api/v1/dead-letters", limit=1000).json()["data"])


def test_each_bad_mqtt_input_is_a_dead_letter_with_its_reason(
    fieldhub: FieldhubProcess, mosquitto: MosquittoProcess
) -> None:
    """Malformed, empty, non-UTF-8, arrays, NaN, wrong types, unknown topics, absurd times, size."""
    publisher = connected_publisher(mosquitto.url)
    publish_all(publisher, [(topic, payload) for topic, payload, _ in BAD_INPUTS])
    by_topic = wait_until(
        lambda: (
            (found := {d["topic"]: d for d in _dead_letters(fieldhub)})
            and all(topic in found for topic, _, _ in BAD_INPUTS)
            and found
        ),
        what="a dead letter per bad input",
    )
    for topic, payload, reason in BAD_INPUTS:
        letter = by_topic[topic]
        assert letter["reason"] == reason, (topic, letter)
        assert letter["detail"], "every dead letter says why"
        assert letter["size"] == len(payload)
        kept = (
            (letter["payload_text"] or "").encode()
            if letter["payload_text"] is not None
            else base64.b64decode(str(letter["payload_base64"]))
        )
        assert payload.startswith(kept)
        assert letter["truncated"] == (len(kept) < len(payload))
    # Filtering by reason and by device works.
    nan = fieldhub.get("/api/v1/dead-letters", reason="non_finite_number").json()["data"]
    assert {d["topic"] for d in nan} >= {BAD_INPUTS[4][0], BAD_INPUTS[5][0]}
    by_device = fieldhub.get("/api/v1/dead-letters", device=MAC.lower()).json()["data"]
    assert [d["reason"] for d in by_device] == ["expected_number"]
    # Still alive and still storing good data.
    good_topic = f"devices/{PREFIX}-good/telemetry"
    publish_all(publisher, [(good_topic, b'{"temperature": 20.5}')])
    wait_until(
        lambda: fieldhub.get(f"/api/v1/devices/{PREFIX}-good").status_code == 200,
        what="good device",
    )
    health = fieldhub.health()
    assert health is not None
    assert health["status"] == "ok"
    reasons = {reason for _, _, reason in BAD_INPUTS}
    for reason in reasons:
        assert fieldhub.metric("fieldhub_dead_letters_total", {"reason": reason}) >= 1
    publisher.stop()


def test_http_ingest_stores_good_and_rejects_bad_with_reason(fieldhub: FieldhubProcess) -> None:
    """POST /api/v1/ingest/{profile}: 201 for data, 422 with the reason for garbage (kept)."""
    url = f"{fieldhub.base_url}/api/v1/ingest/native"
    topic = f"devices/{PREFIX}-http/telemetry"
    ok = httpx.post(
        url, params={"topic": topic}, content=b'{"ts": 1795000000000, "temperature": 19.5}'
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["device_id"] == f"{PREFIX}-http"
    again = httpx.post(
        url, params={"topic": topic}, content=b'{"ts": 1795000000000, "temperature": 19.5}'
    )
    assert again.json()["duplicates"] == 1
    bad = httpx.post(url, params={"topic": topic}, content=b"{nope")
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "malformed_json"
    assert any(
        d["topic"] == topic and d["reason"] == "malformed_json" for d in _dead_letters(fieldhub)
    )
    outside = httpx.post(url, params={"topic": "/readings/gateway/x"}, content=b"{}")
    assert outside.status_code == 422
    unknown = httpx.post(
        f"{fieldhub.base_url}/api/v1/ingest/nope", params={"topic": topic}, content=b"{}"
    )
    assert unknown.status_code == 422
    assert "native" in unknown.json()["error"]["message"]
    huge = httpx.post(url, params={"topic": topic}, content=b"x" * 70_000)
    assert huge.status_code == 413


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/devices/x/readings", {"start": "yesterday"}),
        ("/api/v1/devices/x/readings", {"start": "2026-01-02", "end": "2026-01-01"}),
        ("/api/v1/devices/x/series", {"metric": "t", "interval": "fast"}),
        ("/api/v1/devices/x/series", {"metric": "t", "interval": "1s", "start": "2020-01-01"}),
        # Past 3660 days the bucket arithmetic left the stores' 64-bit integers: it was a 500.
        ("/api/v1/devices/x/series", {"metric": "t", "interval": "99999999999999d"}),
        ("/api/v1/devices", {"limit": "0"}),
        ("/api/v1/devices", {"cursor": "not-a-cursor"}),
        ("/api/v1/devices/bad id", {}),
        # `..` percent-encoded (a client resolves a literal one away): the server decodes it.
        ("/api/v1/devices/%2E%2E", {}),
    ],
)
def test_bad_api_requests_get_422_json_with_a_message(
    fieldhub: FieldhubProcess, path: str, params: dict[str, str]
) -> None:
    """Bad ranges, intervals, limits and cursors get 422 JSON naming the problem, never 500."""
    response = fieldhub.get(path, **params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["message"]
