"""`GET /api/v1/series` (one metric across devices) against a real `fieldhub up`, on SQLite and
on PostgreSQL, compared with the same aggregate computed here from every reading sent."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from fieldhub.broker import MosquittoProcess
from fieldhub.protocol.timestamps import format_us
from support.fieldhub_process import FieldhubProcess
from support.postgres import PostgresServer

# An hour three days ago: a plausible device time, and outside the default last-24-h window.
BASE_S = (int(time.time()) // 3600 - 72) * 3600
MAC = "3C:E9:0E:72:12:4C"
US = 1_000_000

# (device, epoch s, value) of metric temp; hum readings also exist and must never leak in.
READINGS: list[tuple[str, float, float]] = [
    *(("fleet-a", BASE_S + 60 * i + 15, 20 + 0.25 * i) for i in range(-10, 130)),
    *(("fleet-b", BASE_S + 60 * i + 30, 10 - 0.5 * i) for i in range(-10, 130)),
    *((MAC, BASE_S + 90 * i + 7.5, float(i % 7)) for i in range(-5, 85)),
    # Every device at the same instants, the earliest and the latest of the second hour: the
    # ties first and last resolve by id (the MAC sorts first, bytewise).
    *((device, BASE_S + 3600.25, 1.0 + k) for k, device in enumerate(("fleet-a", "fleet-b", MAC))),
    *((device, BASE_S + 7199.75, 4.0 + k) for k, device in enumerate(("fleet-a", "fleet-b", MAC))),
]


def post_readings(fh: FieldhubProcess) -> None:
    """Native telemetry over HTTP as buffered `{"ts", "values"}` lists, a device at a time."""
    topics = {"fleet-a": "fleet-a", "fleet-b": "fleet-b", MAC: "3ce90e72124c"}
    for device, topic_id in topics.items():
        entries = [
            {"ts": round(ts * 1000), "values": {"temp": value, "hum": 1000.0}}
            for d, ts, value in READINGS
            if d == device
        ]
        response = httpx.post(
            f"{fh.base_url}/api/v1/ingest/native",
            params={"topic": f"devices/{topic_id}/telemetry"},
            content=orjson.dumps(entries),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 201, response.text


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fh(
    request: pytest.FixtureRequest,
    mosquitto: MosquittoProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FieldhubProcess]:
    """fieldhub on one backend, holding READINGS (stored when the ingest call answers)."""
    extra: list[str] = []
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        extra = ["--db", server.new_database()]
    process = FieldhubProcess(
        data_dir=tmp_path_factory.mktemp(f"fleet-{request.param}") / "fh",
        mqtt_url=mosquitto.url,
        extra_args=extra,
    ).start()
    post_readings(process)
    yield process
    assert process.stop() == 0


def series(fh: FieldhubProcess, **params: Any) -> httpx.Response:
    return httpx.get(f"{fh.base_url}/api/v1/series", params=params, timeout=30)


def expected(
    devices: set[str] | None, start_s: float, end_s: float, interval_s: int, agg: str
) -> list[dict[str, Any]]:
    """The points as the API documents them, from READINGS."""
    buckets: dict[int, list[tuple[float, str, float]]] = {}
    for device, ts, value in READINGS:
        if (devices is None or device in devices) and start_s <= ts < end_s:
            ts_us = round(ts * US)
            bucket = ts_us - ts_us % (interval_s * US)
            buckets.setdefault(bucket, []).append((ts, device, value))
    points = []
    for bucket, rows in sorted(buckets.items()):
        values = [v for _, _, v in rows]
        value = {
            "avg": math.fsum(values) / len(values),
            "min": min(values),
            "max": max(values),
            "sum": math.fsum(values),
            "count": float(len(values)),
            "first": min(rows, key=lambda r: (r[0], r[1]))[2],
            "last": min(rows, key=lambda r: (-r[0], r[1]))[2],
        }[agg]
        points.append({"ts": format_us(bucket), "value": value, "count": len(values)})
    return points


def assert_points(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [(p["ts"], p["count"]) for p in got] == [(p["ts"], p["count"]) for p in want]
    assert [p["value"] for p in got] == pytest.approx([p["value"] for p in want], rel=1e-9)


@pytest.mark.parametrize("agg", ["avg", "min", "max", "sum", "count", "first", "last"])
def test_every_device_hourly_over_a_ragged_range(fh: FieldhubProcess, agg: str) -> None:
    """No `devices`: every device that reported temp; raw edges, minute and hour rollups."""
    start, end = BASE_S - 317, BASE_S + 2 * 3600 + 7 * 60 + 13
    response = series(fh, metric="temp", start=start, end=end, interval="1h", agg=agg)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["devices"] is None
    assert (body["metric"], body["agg"], body["interval_s"]) == ("temp", agg, 3600.0)
    assert (body["start"], body["end"]) == (format_us(start * US), format_us(end * US))
    want = expected(None, start, end, 3600, agg)
    assert_points(body["points"], want)
    if agg in ("first", "last"):
        assert want[2]["value"] == {"first": 3.0, "last": 6.0}[agg]


@pytest.mark.parametrize("agg", ["avg", "max", "first", "last"])
def test_listed_devices_in_any_spelling(fh: FieldhubProcess, agg: str) -> None:
    """A MAC in another spelling finds its device; the answer names the canonical ids."""
    start, end = BASE_S - 600, BASE_S + 2 * 3600
    response = series(
        fh,
        metric="temp",
        devices="fleet-b, 3c-e9-0e-72-12-4c,fleet-b",
        start=format_us(start * US),
        end=end,
        interval="10m",
        agg=agg,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["devices"] == ["fleet-b", MAC]
    assert_points(body["points"], expected({"fleet-b", MAC}, start, end, 600, agg))


def test_defaults_are_the_last_day_in_about_300_buckets(fh: FieldhubProcess) -> None:
    """Without start, end or interval: the last 24 h (nothing there: the data is older)."""
    response = series(fh, metric="temp")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["agg"], body["interval_s"], body["points"]) == ("avg", 300.0, [])


def test_an_unknown_metric_is_an_empty_series(fh: FieldhubProcess) -> None:
    response = series(fh, metric="nope", start=BASE_S, end=BASE_S + 3600, interval="1m")
    assert response.status_code == 200, response.text
    assert response.json()["points"] == []


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({}, 422, "metric"),
        ({"metric": "temp", "interval": "often"}, 422, "is not a duration"),
        ({"metric": "temp", "interval": "0.5ms"}, 422, "below the 1 ms minimum"),
        ({"metric": "temp", "interval": "99999999999999d"}, 422, "3660-day maximum"),
        ({"metric": "temp", "start": BASE_S + 60, "end": BASE_S}, 422, "must be before end"),
        ({"metric": "temp", "start": "yesterday"}, 422, "start:"),
        ({"metric": "temp", "interval": "1s", "start": BASE_S}, 422, "buckets requested"),
        ({"metric": "temp", "agg": "median"}, 422, "agg"),
        ({"metric": "temp", "devices": "fleet-a,,fleet-b"}, 422, "empty name"),
        ({"metric": "temp", "devices": "fleet-a,bad id!"}, 422, "devices:"),
        ({"metric": "temp", "devices": "fleet-a,ghost-1"}, 404, "no device 'ghost-1'"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(
    fh: FieldhubProcess, params: dict[str, Any], status: int, message: str
) -> None:
    response = series(fh, **params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"], error
