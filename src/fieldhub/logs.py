"""Log records as text or as one JSON object a line, and the ids a record is about.

The ids: `request_id` is a context variable the HTTP middleware sets for the whole of a request
(`api/request_ids.py`), so any line logged while serving it carries it without being passed
along; `device_id` and `command_id` are passed by the log calls that concern one device or
command, as `extra=about(device_id=..., command_id=...)`. The text format shows none of them
(its messages already name what they are about); the JSON format gives each its own key.

A leaf like `clock.py`: every layer logs, so this imports nothing else of fieldhub.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# The request being served, set by the HTTP middleware for the task serving it (each request
# runs in a task of its own, which gets its own copy of the context: no request sees another's).
request_id: ContextVar[str | None] = ContextVar("fieldhub_request_id", default=None)

# Record attributes the JSON format copies when a log call set them (`extra=`): the ids, and the
# access line's parts (api/request_ids.py). A fixed list, not every extra attribute: libraries
# put objects in `extra` (sockets, scopes) that have no business in a log line.
FIELDS = ("request_id", "device_id", "command_id", "method", "path", "status", "duration_ms")


def about(*, device_id: str | None = None, command_id: str | None = None) -> dict[str, str]:
    """The `extra=` of a log call about one device or command: the ids that are known."""
    ids = {"device_id": device_id, "command_id": command_id}
    return {key: value for key, value in ids.items() if value is not None}


def rfc3339(created_s: float) -> str:
    """A record's time as RFC 3339 in UTC with milliseconds: `2026-12-05T13:09:40.123Z`."""
    stamp = datetime.fromtimestamp(created_s, UTC).isoformat(timespec="milliseconds")
    return stamp.removesuffix("+00:00") + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a record: time, level, logger, message, exception (its traceback text,
    when there is one), stack (when asked for) and the `FIELDS` that apply."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if "request_id" not in entry:
            # Formatted where it was logged (a StreamHandler formats in the caller's context).
            current = request_id.get()
            if current is not None:
                entry["request_id"] = current
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field a caller filled with something else (a UUID, a Path) still
        # makes a line rather than an error inside logging.
        return json.dumps(entry, ensure_ascii=False, default=str)


def json_configured() -> bool:
    """Whether the process logs in the JSON format (`configure(..., "json")` ran)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def say(line: str, log_format: LogFormat) -> None:
    """A line for whoever started the process (where it listens, a port that was taken): on
    stdout in the text format; in the JSON format an info record of the `fieldhub` logger, so
    that every line the process writes parses as JSON."""
    if log_format == "json":
        logging.getLogger("fieldhub").info("%s", line)
    else:
        print(line, flush=True)


def configure(level: str, log_format: LogFormat = "text") -> None:
    """Log records at `level` and above to stderr, one line each, in `log_format`."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        # Python's warnings (deprecations, ResourceWarning) would otherwise be written to
        # stderr as two lines of plain text among the JSON ones.
        logging.captureWarnings(True)
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
