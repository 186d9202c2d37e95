"""What the commands share: a failure that exits with one line, settings from flags, logging."""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer
from pydantic import ValidationError

from fieldhub.config import Settings


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` in red on stderr; the Exit to raise, with status `code`."""
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


def configure_logging(level: str) -> None:
    """Log records at `level` and above to stderr, one timestamped line each."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
