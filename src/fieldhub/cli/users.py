"""`fieldhub users`: people who sign in, managed on the database directly.

For the first admin of a machine without a browser, and for recovery (a forgotten admin
password): whoever can run this can read the data dir anyway. Everything else about users goes
through the API or the dashboard's admin page. Each change is audited as `cli:<os user>`.
"""

from __future__ import annotations

import asyncio
import getpass
import os
from pathlib import Path
from typing import Annotated

import typer

from fieldhub.cli.common import fail, settings_from

app = typer.Typer(
    name="users",
    help="People who sign in: add one or reset a password on the database (docs/security.md).",
    no_args_is_help=True,
)

DataDir = Annotated[Path | None, typer.Option(help="fieldhub's data directory [FIELDHUB_DATA_DIR]")]
Db = Annotated[str | None, typer.Option(help="Database URL [FIELDHUB_DB]")]


def _password(username: str) -> str:
    """Asked twice without echo: a password on the command line would land in shell history."""
    first = getpass.getpass(f"password for {username}: ")
    if getpass.getpass("again: ") != first:
        raise fail("the two passwords differ; nothing changed")
    return first


def _run(data_dir: Path | None, db: str | None, username: str, change: str, role: str) -> None:
    from fieldhub.errors import FieldhubError
    from fieldhub.security.principal import Principal
    from fieldhub.security.roles import Role
    from fieldhub.security.service import AuthService
    from fieldhub.store.open import open_store
    from fieldhub.store.types import StoreError

    settings = settings_from(data_dir=data_dir, db=db)
    try:
        chosen = Role(role)
    except ValueError:
        raise fail(f"--role {role!r}: choose viewer, operator or admin") from None
    password = _password(username)
    actor = Principal(name=f"cli:{getpass.getuser()}", role=Role.ADMIN, kind="user")
    os.umask(0o077)  # a database this creates is for fieldhub alone

    async def apply() -> None:
        store = open_store(settings.db_url)
        await store.open()
        try:
            auth = AuthService(store, enabled=True)
            if change == "add":
                await auth.create_user(actor, username, password, chosen, address=None)
            else:
                await auth.reset_password(actor, username, password, address=None)
        finally:
            await store.close()

    try:
        asyncio.run(apply())
    except (FieldhubError, StoreError) as exc:
        raise fail(getattr(exc, "message", str(exc)), 1) from None
    typer.echo(f"{'added' if change == 'add' else 'changed the password of'} {username}")


@app.command()
def add(
    username: Annotated[str, typer.Argument(help="The name to sign in with")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "viewer",
    data_dir: DataDir = None,
    db: Db = None,
) -> None:
    """Add a user (asks for the password twice)."""
    _run(data_dir, db, username, "add", role)


@app.command("reset-password")
def reset_password(
    username: Annotated[str, typer.Argument(help="The user whose password to set")],
    data_dir: DataDir = None,
    db: Db = None,
) -> None:
    """Set a user's password (asks twice); their sessions end."""
    _run(data_dir, db, username, "reset", "viewer")
