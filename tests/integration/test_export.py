"""`GET /api/v1/export` and `fieldhub export` against a real `fieldhub up`.

Readings carry their own times (HTTP ingest of buffered `{"ts", "values"}` lists, and MQTT), so
every expected row, cell and byte is exact.
"""

from __future__ import annotations

import csv
import io
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fieldhub.broker import MosquittoProcess
from support.fieldhub_process import FIELDHUB, FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all

# A whole hour three days ago: recent enough to be a plausible device time, old enough that
# nothing else the process stores falls near it.
BASE_S = (int(time.time()) // 3600 - 72) * 3600
MAC = "3C:E9:0E:72:12:4C"
BIG = 20_000  # readings of exp-big's metric v (and v2 on every 4th second)


def iso(seconds: float) -> str:
    """The API's time format for whole or fractional epoch seconds."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{moment.microsecond:06d}Z" if moment.microsecond else "Z"
    )


def compact(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y%m%dT%H%M%SZ")


def post_buffered(fh: FieldhubProcess, device: str, entries: list[dict[str, Any]]) -> None:
    """Native telemetry over HTTP, as a device's late buffer: `[{"ts": ms, "values": {...}}]`."""
    for first in range(0, len(entries), 1000):
        response = httpx.post(
            f"{fh.base_url}/api/v1/ingest/native",
            params={"topic": f"devices/{device}/telemetry"},
            content=orjson.dumps(entries[first : first + 1000]),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 201, response.text


def entry(second: float, **values: float) -> dict[str, Any]:
    return {"ts": round((BASE_S + second) * 1000), "values": values}


@pytest.fixture(scope="module")
def fh(
    mosquitto: MosquittoProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FieldhubProcess]:
    """fieldhub with three devices:

    - exp-a: temp at +0, +10, +20, +30.5 s; hum at +10 and +40 s (wide rows with holes);
    - 3C:E9:0E:72:12:4C (over MQTT, bare-MAC topic): temp and rssi at +5 s, temp at +65 s;
    - exp-big: v every second for BIG seconds from +3600 s, v2 every 4th of those seconds.
    """
    process = FieldhubProcess(
        data_dir=tmp_path_factory.mktemp("export") / "fh", mqtt_url=mosquitto.url
    ).start()
    post_buffered(
        process,
        "exp-a",
        [
            entry(0, temp=20.5),
            entry(10, temp=21.0, hum=40.0),
            entry(20, temp=21.5),
            entry(30.5, temp=22.25),
            entry(40, hum=41.5),
        ],
    )
    publisher = connected_publisher(mosquitto.url)
    publish_all(
        publisher,
        [
            (
                "devices/3ce90e72124c/telemetry",
                orjson.dumps({"ts": (BASE_S + 5) * 1000, "temp": 19.0, "rssi": -61}),
            ),
            (
                "devices/3ce90e72124c/telemetry",
                orjson.dumps({"ts": (BASE_S + 65) * 1000, "temp": 18.5}),
            ),
        ],
    )
    publisher.stop()
    post_buffered(
        process,
        "exp-big",
        [
            entry(3600 + i, v=i * 0.5, **({"v2": float(i)} if i % 4 == 0 else {}))
            for i in range(BIG)
        ],
    )
    wait_until(
        lambda: (
            len(
                process.get(
                    f"/api/v1/devices/{MAC}/readings", start=BASE_S, end=BASE_S + 100
                ).json()["data"]
            )
            == 3
        ),
        what="the MQTT readings stored",
    )
    yield process
    assert process.stop() == 0


def export(fh: FieldhubProcess, **params: Any) -> httpx.Response:
    return httpx.get(f"{fh.base_url}/api/v1/export", params=params, timeout=60)


WINDOW = {"start": BASE_S, "end": BASE_S + 3600}


def test_csv_wide_is_a_row_per_device_and_time_with_empty_cells(fh: FieldhubProcess) -> None:
    response = export(fh, devices=f"exp-a,{MAC}", **WINDOW)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="fieldhub-export-{compact(BASE_S)}-{compact(BASE_S + 3600)}.csv"'
    )
    assert response.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.headers
    assert response.text == (
        "device,ts,hum,rssi,temp\r\n"
        f"exp-a,{iso(BASE_S)},,,20.5\r\n"
        f"exp-a,{iso(BASE_S + 10)},40.0,,21.0\r\n"
        f"exp-a,{iso(BASE_S + 20)},,,21.5\r\n"
        f"exp-a,{iso(BASE_S + 30.5)},,,22.25\r\n"
        f"exp-a,{iso(BASE_S + 40)},41.5,,\r\n"
        f"{MAC},{iso(BASE_S + 5)},,-61.0,19.0\r\n"
        f"{MAC},{iso(BASE_S + 65)},,,18.5\r\n"
    )


def test_csv_long_and_listed_metrics(fh: FieldhubProcess) -> None:
    response = export(fh, devices=f"exp-a,{MAC}", metrics="temp", layout="long", **WINDOW)
    assert response.status_code == 200, response.text
    assert response.text == (
        "device,metric,ts,value\r\n"
        f"exp-a,temp,{iso(BASE_S)},20.5\r\n"
        f"exp-a,temp,{iso(BASE_S + 10)},21.0\r\n"
        f"exp-a,temp,{iso(BASE_S + 20)},21.5\r\n"
        f"exp-a,temp,{iso(BASE_S + 30.5)},22.25\r\n"
        f"{MAC},temp,{iso(BASE_S + 5)},19.0\r\n"
        f"{MAC},temp,{iso(BASE_S + 65)},18.5\r\n"
    )


def test_jsonl_long_by_default_and_wide_on_request(fh: FieldhubProcess) -> None:
    long = export(fh, devices="3c-e9-0e-72-12-4c", format="jsonl", **WINDOW)
    assert long.status_code == 200, long.text
    assert long.headers["content-type"] == "application/x-ndjson"
    assert long.headers["content-disposition"].endswith('.jsonl"')
    assert long.content == b"".join(
        orjson.dumps(row) + b"\n"
        for row in [
            {"device": MAC, "metric": "rssi", "ts": iso(BASE_S + 5), "value": -61.0},
            {"device": MAC, "metric": "temp", "ts": iso(BASE_S + 5), "value": 19.0},
            {"device": MAC, "metric": "temp", "ts": iso(BASE_S + 65), "value": 18.5},
        ]
    )
    wide = export(fh, devices="exp-a", format="jsonl", layout="wide", **WINDOW)
    assert [orjson.loads(line) for line in wide.content.splitlines()] == [
        {"device": "exp-a", "ts": iso(BASE_S), "temp": 20.5},
        {"device": "exp-a", "ts": iso(BASE_S + 10), "hum": 40.0, "temp": 21.0},
        {"device": "exp-a", "ts": iso(BASE_S + 20), "temp": 21.5},
        {"device": "exp-a", "ts": iso(BASE_S + 30.5), "temp": 22.25},
        {"device": "exp-a", "ts": iso(BASE_S + 40), "hum": 41.5},
    ]


@pytest.mark.parametrize("agg", ["avg", "max", "count", "last"])
def test_interval_exports_equal_the_series_endpoint(fh: FieldhubProcess, agg: str) -> None:
    window = {"start": BASE_S, "end": BASE_S + 3600 + BIG}
    response = export(fh, format="jsonl", interval="10m", agg=agg, **window)
    assert response.status_code == 200, response.text
    rows = [orjson.loads(line) for line in response.content.splitlines()]
    got: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for row in rows:
        got.setdefault((row["device"], row["metric"]), []).append((row["ts"], row["value"]))
    series_keys = [
        ("exp-a", "hum"),
        ("exp-a", "temp"),
        ("exp-big", "v"),
        ("exp-big", "v2"),
        (MAC, "rssi"),
        (MAC, "temp"),
    ]
    assert sorted(got) == sorted(series_keys)
    for device, metric in series_keys:
        series = fh.get(
            f"/api/v1/devices/{device}/series", metric=metric, interval="10m", agg=agg, **window
        ).json()
        assert got[(device, metric)] == [(p["ts"], p["value"]) for p in series["points"]]
    assert len(got[("exp-big", "v")]) == BIG // 600 + 1


def test_wide_interval_csv(fh: FieldhubProcess) -> None:
    response = export(fh, devices=f"exp-a,{MAC}", interval="1m", agg="max", **WINDOW)
    assert response.text == (
        "device,ts,hum,rssi,temp\r\n"
        f"exp-a,{iso(BASE_S)},41.5,,22.25\r\n"
        f"{MAC},{iso(BASE_S)},,-61.0,19.0\r\n"
        f"{MAC},{iso(BASE_S + 60)},,,18.5\r\n"
    )


def test_omitted_devices_mean_every_device(fh: FieldhubProcess) -> None:
    response = export(fh, layout="long", start=BASE_S, end=BASE_S + 3600 + BIG)
    devices = {row["device"] for row in csv.DictReader(io.StringIO(response.text))}
    listed = {d["id"] for d in fh.get("/api/v1/devices").json()["data"]}
    assert devices == {"exp-a", "exp-big", MAC} <= listed


def test_a_large_export_streams_completely(fh: FieldhubProcess) -> None:
    """20,000 + 5,000 readings in wide CSV: two store pages for v, every row exact, in order,
    delivered in many chunks."""
    params = {"devices": "exp-big", "start": BASE_S, "end": BASE_S + 3600 + BIG}
    chunks = 0
    body = bytearray()
    with httpx.stream("GET", f"{fh.base_url}/api/v1/export", params=params, timeout=60) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            chunks += 1
            body += chunk
    lines = body.decode().split("\r\n")
    assert lines[0] == "device,ts,v,v2"
    assert lines[-1] == ""
    expected = [
        f"exp-big,{iso(BASE_S + 3600 + i)},{i * 0.5!r},{float(i)!r}"
        if i % 4 == 0
        else f"exp-big,{iso(BASE_S + 3600 + i)},{i * 0.5!r},"
        for i in range(BIG)
    ]
    assert lines[1:-1] == expected
    assert chunks > 5


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"devices": "exp-a,nobody"}, 404, "no device 'nobody'"),
        ({"format": "xml"}, 422, "format"),
        ({"layout": "tall"}, 422, "layout"),
        ({"start": "yesterday"}, 422, "start: 'yesterday' is not a time"),
        ({"start": "2026-01-02", "end": "2026-01-01"}, 422, "must be before end"),
        ({"interval": "5 fortnights"}, 422, "is not a duration"),
        ({"agg": "max"}, 422, "agg needs an interval"),
        ({"agg": "median", "interval": "1m"}, 422, "agg"),
        ({"devices": "exp-a,,exp-b"}, 422, "empty name"),
        ({"devices": "a b"}, 422, "devices:"),
    ],
)
def test_bad_requests_get_json_errors(
    fh: FieldhubProcess, params: dict[str, str], status: int, message: str
) -> None:
    response = export(fh, **params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]["message"]


def run_cli(fh: FieldhubProcess, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FIELDHUB), "export", "--url", fh.base_url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def test_cli_writes_the_export_to_a_file(fh: FieldhubProcess, tmp_path: Path) -> None:
    window = ["--start", str(BASE_S), "--end", str(BASE_S + 3600 + BIG)]
    done = run_cli(
        fh, "--devices", "exp-big", "--layout", "long", "-o", "big.csv", *window, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert f"{BIG + BIG // 4:,} rows" in done.stderr
    assert "to big.csv" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv"]
    http = export(
        fh, devices="exp-big", layout="long", start=BASE_S, end=BASE_S + 3600 + BIG
    ).content
    assert (tmp_path / "big.csv").read_bytes() == http


def test_cli_picks_jsonl_from_the_file_name_and_writes_stdout(
    fh: FieldhubProcess, tmp_path: Path
) -> None:
    window = ["--start", str(BASE_S), "--end", str(BASE_S + 3600)]
    done = run_cli(
        fh, "--devices", "exp-a", "--metrics", "hum", "-o", "a.jsonl", *window, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert [
        orjson.loads(line)["value"] for line in (tmp_path / "a.jsonl").read_bytes().splitlines()
    ] == [40.0, 41.5]
    to_stdout = run_cli(
        fh, "--devices", MAC, "--devices", "exp-a", "--metrics", "rssi", *window, cwd=tmp_path
    )
    assert to_stdout.returncode == 0, to_stdout.stderr
    # Text mode reads the CSV's CRLF line ends as \n.
    assert to_stdout.stdout == f"device,ts,rssi\n{MAC},{iso(BASE_S + 5)},-61.0\n"


def test_cli_refusal_exits_2_and_writes_no_file(fh: FieldhubProcess, tmp_path: Path) -> None:
    done = run_cli(fh, "--devices", "nobody", "-o", "x.csv", cwd=tmp_path)
    assert done.returncode == 2
    assert "404: no device 'nobody'" in done.stderr
    assert list(tmp_path.iterdir()) == []
