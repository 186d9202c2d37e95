"""`fieldhub up --log-format json` as a real process: every line it writes is one JSON object
with the keys docs/operations.md lists; every HTTP answer carries an X-Request-ID (the client's
when it sent a fitting one), which is also in the log lines of that request; a command's lines
carry its command id and device id."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldhub.broker import MosquittoProcess
from support import auth as auth_support
from support.fieldhub_process import FIELDHUB, FieldhubProcess, wait_until

Json = dict[str, Any]
RFC3339_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
LEVELS = {"debug", "info", "warning", "error", "critical"}


@pytest.fixture(scope="module")
def fh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldhubProcess]:
    """Authentication on (401 and 403 answers to see), debug level (access lines and a line per
    command transition), the embedded broker."""
    process = FieldhubProcess(
        data_dir=tmp_path_factory.mktemp("logs"),
        auth=True,
        extra_args=["--log-format", "json", "--log-level", "debug"],
    ).start()
    yield process
    process.stop()


def entries(log_path: Path) -> list[Json]:
    """Every line of the process's stdout and stderr, each parsed as one JSON object."""
    parsed: list[Json] = []
    for number, line in enumerate(log_path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), line
        parsed.append(entry)
    return parsed


def access_lines(fh: FieldhubProcess, request_id: str) -> list[Json]:
    return [
        e
        for e in entries(fh.log_path)
        if e["logger"] == "fieldhub.access" and e.get("request_id") == request_id
    ]


def wait_access_line(fh: FieldhubProcess, request_id: str) -> Json:
    """The access line of the request (logged as its answer ends, so shortly after the client
    has the answer)."""
    lines: list[Json] = wait_until(
        lambda: access_lines(fh, request_id) or None, timeout_s=10, what=f"access {request_id}"
    )
    assert len(lines) == 1, lines
    return lines[0]


def test_every_line_is_json_with_the_keys(fh: FieldhubProcess) -> None:
    httpx.get(f"{fh.base_url}/healthz", timeout=10)
    found = entries(fh.log_path)
    assert len(found) > 10
    for entry in found:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        assert RFC3339_UTC_MS.fullmatch(entry["time"]), entry
        assert entry["level"] in LEVELS, entry
    messages = [e["message"] for e in found]
    # The banner (stdout in the text format) came as records too, and uvicorn's own lines.
    assert "fieldhub is running" in messages
    assert any(m.startswith("  Dashboard: http://127.0.0.1:") for m in messages), messages
    assert any(e["logger"] == "uvicorn.error" for e in found), messages


@pytest.mark.parametrize(
    ("what", "method", "path", "headers", "status"),
    [
        ("ok", "GET", "/api/v1/devices", "admin", 200),
        ("health", "GET", "/healthz", None, 200),
        ("not found", "GET", "/api/v1/devices/no-such-device", "admin", 404),
        ("no credentials", "GET", "/api/v1/devices", None, 401),
        ("below the role", "POST", "/api/v1/devices/d1/commands", "viewer", 403),
        ("invalid", "GET", "/api/v1/devices?limit=not-a-number", "admin", 422),
        ("no route", "GET", "/api/v1/no-such-resource", "admin", 404),
        ("login redirect", "GET", "/", None, 303),
        ("static file", "GET", "/static/http.js", None, 200),
    ],
)
def test_every_answer_carries_the_request_id_and_so_does_its_log_line(
    fh: FieldhubProcess,
    viewer_token: str,
    what: str,
    method: str,
    path: str,
    headers: str | None,
    status: int,
) -> None:
    auth = {
        "admin": {"Authorization": f"Bearer {fh.admin_token}"},
        "viewer": {"Authorization": f"Bearer {viewer_token}"},
        None: {},
    }[headers]
    given = f"test-{uuid.uuid4().hex[:12]}"
    with httpx.Client(base_url=fh.base_url, timeout=10, follow_redirects=False) as client:
        answered = client.request(method, path, headers={**auth, "X-Request-ID": given}, json={})
        made = client.request(method, path, headers=auth, json={})
        # Too long to keep: replaced by one of ours.
        refused = client.request(method, path, headers={**auth, "X-Request-ID": "x" * 200})
    assert answered.status_code == made.status_code == refused.status_code == status, (
        what,
        answered.text,
    )
    assert answered.headers["X-Request-ID"] == given
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"]), made.headers
    assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["X-Request-ID"]), refused.headers
    if status >= 400 and answered.headers["content-type"].startswith("application/json"):
        assert answered.json()["error"]["request_id"] == given
        assert made.json()["error"]["request_id"] == made.headers["X-Request-ID"]
    for request_id in (given, made.headers["X-Request-ID"]):
        line = wait_access_line(fh, request_id)
        assert line["method"] == method
        assert line["path"] == path.split("?")[0]
        assert line["status"] == status
        assert line["duration_ms"] >= 0
        assert line["level"] == "debug"


@pytest.fixture(scope="module")
def viewer_token(fh: FieldhubProcess) -> str:
    token = auth_support.create_token(fh.base_url, fh.admin_token, role="viewer")["token"]
    assert isinstance(token, str)
    return token


def test_a_command_s_lines_carry_its_ids(fh: FieldhubProcess) -> None:
    """A device made over HTTP, a command to it that nothing answers: its transitions' lines
    (pending, sent, timed out) have the command's and the device's id, and the line of the one
    made while serving the request that made it has that request's id."""
    device_id = f"log-{uuid.uuid4().hex[:8]}"
    admin = {"Authorization": f"Bearer {fh.admin_token}"}
    stored = httpx.post(
        f"{fh.base_url}/api/v1/ingest/native",
        params={"topic": f"devices/{device_id}/telemetry"},
        json={"t": 21.5},
        headers=admin,
        timeout=10,
    )
    assert stored.status_code == 201, stored.text
    created = httpx.post(
        f"{fh.base_url}/api/v1/devices/{device_id}/commands",
        json={"name": "ping", "timeout_s": 0.5},
        headers={**admin, "X-Request-ID": "make-the-command"},
        timeout=10,
    )
    assert created.status_code in (201, 202), created.text
    command_id = created.json()["id"]

    def transitions() -> list[Json] | None:
        lines = [e for e in entries(fh.log_path) if e.get("command_id") == command_id]
        return lines if lines and lines[-1]["message"].endswith(": timed_out") else None

    lines: list[Json] = wait_until(transitions, timeout_s=20, what="the command's timeout")
    prefix = f"command {command_id} of {device_id}: "
    assert [e["message"].removeprefix(prefix) for e in lines] == ["pending", "sent", "timed_out"]
    assert all(e["device_id"] == device_id for e in lines), lines
    assert all(e["logger"] == "fieldhub.commands" for e in lines), lines
    assert lines[0]["request_id"] == "make-the-command"


def test_ingest_workers_log_json_too(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """`fieldhub ingest --log-format json`: the supervisor's lines and its worker's (a process
    of its own, told by FIELDHUB_LOG_FORMAT) are JSON objects."""
    log_path = tmp_path / "ingest.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(FIELDHUB),
                "ingest",
                "--workers",
                "1",
                "--db",
                f"sqlite:///{tmp_path / 'ingest.db'}",
                "--mqtt-url",
                mosquitto.url,
                "--log-format",
                "json",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FIELDHUB_MQTT_CLIENT_ID": f"fh-logs-{uuid.uuid4().hex[:8]}"},
        )
        try:

            def started() -> list[Json] | None:
                found = entries(log_path)
                messages = [e["message"] for e in found]
                worker_up = any(m.startswith("ingest worker 1: ") for m in messages)
                return (
                    found
                    if worker_up and "fieldhub ingest: 1 workers started" in messages
                    else None
                )

            wait_until(started, timeout_s=30, what="the ingest worker's start")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    found = entries(log_path)
    assert any(m["message"].startswith("ingest worker 1 stopped") for m in found), found
    for entry in found:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry


def test_a_refused_start_says_why_in_json(tmp_path: Path) -> None:
    """A start refused after the log format is known (here: the broker URL's placeholder
    password) ends with one error record, not a line of text."""
    done = subprocess.run(
        [
            str(FIELDHUB),
            "up",
            "--data-dir",
            str(tmp_path),
            "--mqtt-url",
            "mqtt://fieldhub:changeme@127.0.0.1:1",
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FIELDHUB_AUTH": "true"},
    )
    assert done.returncode == 2, done.stderr
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines()]
    assert [(e["level"], e["logger"]) for e in lines] == [("error", "fieldhub")], lines
    assert lines[0]["message"].startswith("error: --mqtt-url logs in as 'fieldhub' with"), lines
