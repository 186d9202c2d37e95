"""The `fieldhub` command line: the Typer app, one module per command or pair of commands.

Commands stay synchronous and call `asyncio.run` themselves (Typer never awaits an `async def`
command: it exits 0 without running it; docs/field-notes.md).
"""

from __future__ import annotations

import os

import typer

from fieldhub import __version__
from fieldhub.cli import (
    alarms,
    backup,
    certs,
    commands,
    devices,
    export,
    migrate,
    ml,
    rules,
    run,
    sim,
    users,
)

app = typer.Typer(
    name="fieldhub",
    help="An open platform for fleets of ESP32 sensor and actuator nodes.",
    no_args_is_help=True,
    add_completion=False,
)


def version() -> None:
    """Print the fieldhub version."""
    typer.echo(__version__)


# Registered here, in the order `fieldhub --help` lists them. The modules are bound by their
# own names (fieldhub.cli.export is the module, not its command function).
for _command in (
    run.up,
    sim.sim,
    commands.command,
    export.export,
    migrate.migrate,
    backup.backup,
    backup.restore,
    run.ingest,
    version,
):
    app.command()(_command)
app.add_typer(certs.app)
app.add_typer(devices.app)
app.add_typer(users.app)
app.add_typer(rules.app)
app.add_typer(alarms.app)
app.add_typer(ml.app)


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
