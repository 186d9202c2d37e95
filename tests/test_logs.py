"""The JSON log format (fieldhub/logs.py): one object a record, its keys and the ids."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from fieldhub import logs

RFC3339_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def record(
    message: str = "hello %s",
    args: tuple[object, ...] = ("world",),
    *,
    level: int = logging.INFO,
    exc_info: Any = None,
    **extra: object,
) -> logging.LogRecord:
    made = logging.LogRecord("fieldhub.test", level, __file__, 1, message, args, exc_info)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def formatted(made: logging.LogRecord) -> dict[str, Any]:
    line = logs.JsonFormatter().format(made)
    assert "\n" not in line, line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_a_record_is_one_object_with_time_level_logger_message() -> None:
    entry = formatted(record())
    assert set(entry) == {"time", "level", "logger", "message"}
    assert RFC3339_UTC_MS.fullmatch(entry["time"]), entry["time"]
    assert entry["level"] == "info"
    assert entry["logger"] == "fieldhub.test"
    assert entry["message"] == "hello world"


def test_the_time_is_utc_with_milliseconds() -> None:
    assert logs.rfc3339(0.25) == "1970-01-01T00:00:00.250Z"
    assert logs.rfc3339(1_796_477_380.5) == "2026-12-05T13:29:40.500Z"


def test_device_and_command_ids_from_extra() -> None:
    extra = logs.about(device_id="esp32-01", command_id="c-7")
    entry = formatted(record(**extra))
    assert entry["device_id"] == "esp32-01"
    assert entry["command_id"] == "c-7"
    assert "request_id" not in entry


def test_about_leaves_out_ids_that_are_not_known() -> None:
    assert logs.about(device_id="esp32-01") == {"device_id": "esp32-01"}
    assert logs.about() == {}


def test_request_id_from_the_context() -> None:
    token = logs.request_id.set("req-1")
    try:
        assert formatted(record())["request_id"] == "req-1"
        # One a record names itself (the access line) wins over the context's.
        assert formatted(record(request_id="req-2"))["request_id"] == "req-2"
    finally:
        logs.request_id.reset(token)
    assert "request_id" not in formatted(record())


def test_an_exception_comes_as_its_traceback_text() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        entry = formatted(record("failed", (), level=logging.ERROR, exc_info=sys.exc_info()))
    assert entry["level"] == "error"
    assert entry["message"] == "failed"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].rstrip().endswith("ValueError: bad value")


def test_other_extra_attributes_stay_out() -> None:
    """Libraries put objects in `extra` (websockets: the connection); only the listed keys go
    into the line."""
    entry = formatted(record(websocket=object(), scope={"type": "http"}))
    assert set(entry) == {"time", "level", "logger", "message"}


def test_values_json_cannot_hold_become_text_and_text_stays_unicode() -> None:
    entry = formatted(record("%s °C", (21.5,), device_id=Path("esp32-01")))
    assert entry["device_id"] == "esp32-01"
    assert entry["message"] == "21.5 °C"
    line = logs.JsonFormatter().format(record("a\nb\x00", ()))
    assert json.loads(line)["message"] == "a\nb\x00"
    assert "\n" not in line


def test_configure_json_makes_every_line_of_the_process_json(tmp_path: Path) -> None:
    """In a process of its own (logging's configuration is global): records, `say` lines and a
    Python warning all leave as JSON objects on stderr."""
    script = (
        "import logging, warnings\n"
        "from fieldhub import logs\n"
        "logs.configure('info', 'json')\n"
        "assert logs.json_configured()\n"
        "logging.getLogger('fieldhub.x').info('one %d', 1, extra=logs.about(device_id='d1'))\n"
        "logs.say('  Dashboard: http://127.0.0.1:8000/', 'json')\n"
        "warnings.warn('old', DeprecationWarning, stacklevel=1)\n"
        "logging.getLogger('fieldhub.x').debug('not at info')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert done.stdout == ""
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(e["logger"], e["level"]) for e in entries] == [
        ("fieldhub.x", "info"),
        ("fieldhub", "info"),
        ("py.warnings", "warning"),
    ]
    assert entries[0]["message"] == "one 1"
    assert entries[0]["device_id"] == "d1"
    assert entries[1]["message"] == "  Dashboard: http://127.0.0.1:8000/"
    assert "DeprecationWarning: old" in entries[2]["message"]


def test_configure_text_keeps_the_line_format() -> None:
    script = (
        "import logging\n"
        "from fieldhub import logs\n"
        "logs.configure('info', 'text')\n"
        "assert not logs.json_configured()\n"
        "logging.getLogger('fieldhub.x').warning('w %s', 'x', extra=logs.about(device_id='d1'))\n"
        "logs.say('said', 'text')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    )
    assert done.stdout == "said\n"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING fieldhub\.x: w x\n", done.stderr
    ), done.stderr
