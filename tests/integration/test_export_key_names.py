"""Metrics named like the export's key columns against a real `fieldhub up` (issue 18): one
`{"ts": true, "t": 1}` made the default `GET /api/v1/export` a 422 for everyone until the data
was gone. Now every format and layout, and `fieldhub export`, answer with every value, the wide
layout naming such metrics by the documented rule (docs/export.md, Metric names)."""

from __future__ import annotations

import csv
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fieldhub.broker import MosquittoProcess
from support.fieldhub_process import FIELDHUB, FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all

DEVICE = "exp-keys"
# The probe's message, then every key-column name of either layout (and names like them)
# beside a plain metric. Neither carries a date, so each is stored at its receive time.
MESSAGES: list[dict[str, Any]] = [
    {"ts": True, "t": 1},
    {
        "ts": 1,
        "device": 2,
        "time": 3,
        "timestamp": 4,
        "device_id": 5,
        "metric": 6,
        "value": 7,
        "_ts": 8,
        "_device": 9,
        "temp": 21.5,
    },
]
# Each metric's wide column: a key column's name behind underscores takes one more.
COLUMNS = {"ts": "_ts", "device": "_device", "_ts": "__ts", "_device": "__device"}
METRICS = sorted({name for message in MESSAGES for name in message})


@pytest.fixture(scope="module")
def fh(
    mosquitto: MosquittoProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FieldhubProcess]:
    """fieldhub with one device that sent the messages above over MQTT."""
    process = FieldhubProcess(
        data_dir=tmp_path_factory.mktemp("export-keys") / "fh", mqtt_url=mosquitto.url
    ).start()
    publisher = connected_publisher(mosquitto.url)
    publish_all(
        publisher,
        [(f"devices/{DEVICE}/telemetry", orjson.dumps(message)) for message in MESSAGES],
    )
    publisher.stop()
    wait_until(
        lambda: (
            len(process.get(f"/api/v1/devices/{DEVICE}/readings", limit=100).json()["data"])
            == sum(len(message) for message in MESSAGES)
        ),
        what="both messages stored",
    )
    yield process
    assert process.stop() == 0


def export(fh: FieldhubProcess, **params: str) -> httpx.Response:
    return httpx.get(f"{fh.base_url}/api/v1/export", params=params, timeout=60)


def expected_rows() -> list[dict[str, float]]:
    """Each message's values as floats under their wide column names, in sending order."""
    return [
        {COLUMNS.get(name, name): float(value) for name, value in message.items()}
        for message in MESSAGES
    ]


def test_the_default_export_answers_with_every_value(fh: FieldhubProcess) -> None:
    """No parameters at all (CSV, wide, every device, the last 24 h): 200, not 422."""
    response = export(fh)
    assert response.status_code == 200, response.text
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == ["device", "ts", *(COLUMNS.get(m, m) for m in METRICS)]
    assert [row["device"] for row in rows] == [DEVICE, DEVICE]
    values = [
        {name: float(cell) for name, cell in row.items() if cell and name not in ("device", "ts")}
        for row in rows
    ]
    assert values == expected_rows()


@pytest.mark.parametrize("listed", [False, True])
def test_wide_json_lines_with_and_without_listed_metrics(fh: FieldhubProcess, listed: bool) -> None:
    """`metrics=` takes the metrics' own names; the rows use the column names."""
    params = {"format": "jsonl", "layout": "wide"}
    if listed:
        params["metrics"] = ",".join(METRICS)
    response = export(fh, **params)
    assert response.status_code == 200, response.text
    rows = [orjson.loads(line) for line in response.content.splitlines()]
    assert [row.pop("device") for row in rows] == [DEVICE, DEVICE]
    assert all(isinstance(row.pop("ts"), str) for row in rows)
    assert rows == expected_rows()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_the_long_layout_keeps_the_metric_names(fh: FieldhubProcess, fmt: str) -> None:
    response = export(fh, format=fmt, layout="long")
    assert response.status_code == 200, response.text
    if fmt == "csv":
        rows: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(response.text)))
    else:
        rows = [orjson.loads(line) for line in response.content.splitlines()]
    got = sorted((row["metric"], float(row["value"])) for row in rows)
    assert got == sorted(
        (name, float(value)) for message in MESSAGES for name, value in message.items()
    )


def test_the_cli_exports_them_too(fh: FieldhubProcess, tmp_path: Path) -> None:
    """`fieldhub export` with its defaults (CSV, wide) and to a JSON lines file."""
    done = subprocess.run(
        [str(FIELDHUB), "export", "--url", fh.base_url, "-o", "keys.csv"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "keys.csv").read_bytes() == export(fh).content
    done = subprocess.run(
        [str(FIELDHUB), "export", "--url", fh.base_url, "--layout", "wide", "-o", "keys.jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rows = [orjson.loads(line) for line in (tmp_path / "keys.jsonl").read_bytes().splitlines()]
    assert [{k: v for k, v in row.items() if k not in ("device", "ts")} for row in rows] == (
        expected_rows()
    )
