"""The broker's log file: Mosquitto's stdout and stderr, appended to across restarts."""

from __future__ import annotations

import os
from pathlib import Path

# Lines of the broker log quoted in a BrokerStartError: enough for Mosquitto's
# few startup lines plus the error, short enough to read in a terminal.
LOG_TAIL_LINES = 20

# The log is appended to across restarts; beyond this size it is moved to
# mosquitto.log.1 (one generation kept) when the broker starts. With connection
# messages off the broker logs a few lines per start, so this is years of normal
# use and only bounds a broker stuck in a warning loop.
MAX_LOG_BYTES = 16 * 1024 * 1024


def rotate_log(log_path: Path) -> None:
    """Move an oversized log aside, keeping one previous generation."""
    try:
        size = log_path.stat().st_size
    except FileNotFoundError:
        return
    if size > MAX_LOG_BYTES:
        os.replace(log_path, log_path.with_name(log_path.name + ".1"))


def read_log_tail(log_path: Path, offset: int, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last `lines` lines written to `log_path` after byte `offset`.

    `offset` is where the current process's output starts, so an earlier run's
    lines are never quoted as this one's.
    """
    try:
        with log_path.open("rb") as log:
            log.seek(offset)
            data = log.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
