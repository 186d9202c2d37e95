"""What the commands share: a failure that exits with one line, settings from flags, logging."""

from __future__ import annotations

import logging
from typing import Any

import typer
from pydantic import ValidationError

from fieldhub import logs
from fieldhub.config import Settings
from fieldhub.logs import LogFormat


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` in red on stderr (once `--log-format json` is in force, an error
    record of the `fieldhub` logger instead); the Exit to raise, with status `code`."""
    if logs.json_configured():
        # What stops a service is the one line its log collector must be able to read.
        logging.getLogger("fieldhub").error("error: %s", message)
    else:
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def settings_from(**flags: Any) -> Settings:
    """Settings from flags over FIELDHUB_* variables; validation errors become one clear message."""
    given = {key: value for key, value in flags.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise fail(
            "invalid settings (flags or FIELDHUB_* variables):\n" + "\n".join(lines)
        ) from None


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Log records at `level` and above to stderr, one line each: timestamped text, or one JSON
    object (`--log-format json`, fieldhub/logs.py)."""
    logs.configure(level, log_format)
