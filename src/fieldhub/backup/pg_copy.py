"""PostgreSQL into a backup and back: pg_dump's custom format and pg_restore.

The dump is taken in a snapshot fieldhub exported (`pg_export_snapshot()`, `pg_dump
--snapshot`), the same one the row counts and series stats of the manifest were read in, so the
restore can be checked against exactly what the dump holds. The running fieldhub keeps writing
meanwhile: a repeatable-read snapshot blocks no writer.

A restore runs pg_restore in one transaction (`--single-transaction`): it fails whole, leaving
the target as it was. Objects are created without their dumped owner and grants (`--no-owner
--no-privileges`), so the database belongs to whoever restores it, as it did to whoever created
it before.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from fieldhub.backup.contents import BackupError, BackupRefused
from fieldhub.backup.pg_tools import Tool, find_tool
from fieldhub.store.migrate import safe_url
from fieldhub.store.migrate_tables import TABLES
from fieldhub.store.migrate_verify import PostgresSide, SourceFacts, sample_source

# The stderr lines of a failed pg_dump or pg_restore quoted in the error.
STDERR_LINES = 12


def libpq_args(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment that passes the password instead
    (PGPASSWORD): a command line is visible to every local user in `ps`."""
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password is None:
        return url, env
    env["PGPASSWORD"] = unquote(parts.password)
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host)), env


async def connect(url: str) -> asyncpg.Connection:
    """A connection; BackupError saying where when it fails."""
    try:
        return await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BackupError(f"cannot connect to PostgreSQL at {safe_url(url)}: {exc}") from exc


async def run_tool(tool: Tool, *args: str, url: str) -> str:
    """Run a client program against `url`; its stdout, or BackupError with its stderr's end."""
    dsn, env = libpq_args(url)
    process = await asyncio.create_subprocess_exec(
        str(tool.path),
        *args,
        f"--dbname={dsn}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()[-STDERR_LINES:]
        raise BackupError(
            f"{tool.path.name} failed (exit {process.returncode}): " + "\n".join(lines)
        )
    return out.decode(errors="replace")


async def dump(url: str, target: Path) -> tuple[SourceFacts, int, str]:
    """Dump the database at `url` into `target` (custom format); the manifest's facts, read in
    the dump's snapshot, the schema version and pg_dump's version line."""
    conn = await connect(url)
    try:
        tool = find_tool("pg_dump", conn.get_server_version().major)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            try:
                schema = int(await conn.fetchval("SELECT max(version) FROM schema_migrations"))
                facts = await sample_source(PostgresSide(conn))
            except asyncpg.UndefinedTableError as exc:
                raise BackupRefused(
                    f"{safe_url(url)} is not a fieldhub database ({exc}): pass the --db "
                    "fieldhub runs with"
                ) from None
            # The snapshot lives as long as this transaction: pg_dump runs inside it.
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            await run_tool(
                tool, "--format=custom", f"--snapshot={snapshot}", f"--file={target}", url=url
            )
    finally:
        await conn.close()
    await check_archive(target, tool.major)
    return facts, schema, tool.version_line


async def archive_tables(path: Path, major: int) -> set[str]:
    """The tables the archive creates (its table of contents, read by pg_restore); BackupError
    when pg_restore cannot read it."""
    tool = find_tool("pg_restore", major)
    process = await asyncio.create_subprocess_exec(
        str(tool.path),
        "--list",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise BackupError(
            f"pg_restore cannot read {path} ({err.decode(errors='replace').strip()}): the dump "
            "is damaged or not a pg_dump archive"
        )
    created = set()
    for line in out.decode(errors="replace").splitlines():
        words = line.split()
        # "215; 1259 16385 TABLE public devices owner"
        if len(words) >= 6 and words[3] == "TABLE" and not line.startswith(";"):
            created.add(words[5])
    return created


async def check_archive(path: Path, major: int) -> None:
    """BackupError unless pg_restore reads the archive and it creates every table fieldhub
    has."""
    created = await archive_tables(path, major)
    missing = [t.name for t in TABLES if t.name not in created]
    if missing:
        raise BackupError(
            f"the dump {path} lacks tables {', '.join(missing)}: back up again with the "
            "--db fieldhub runs with"
        )


async def refuse_unless_empty(conn: asyncpg.Connection, url: str) -> None:
    """BackupRefused when another session uses the target database or a fieldhub table in it
    holds rows."""
    others = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    if others:
        raise BackupRefused(
            f"{others} other session(s) use {safe_url(url)} (a running fieldhub?): stop fieldhub "
            "and restore again; nothing was changed"
        )
    existing = await _tables(conn)
    names = [t.name for t in TABLES if t.name in existing]
    filled = [n for n in names if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {n})")]
    if filled:
        raise BackupRefused(
            f"the target database {safe_url(url)} already holds fieldhub data (rows in "
            f"{', '.join(filled)}); nothing was changed. Restore into an empty database: create "
            "a new one (createdb fieldhub) or drop and recreate this one"
        )


async def _tables(conn: asyncpg.Connection) -> set[str]:
    return {
        r[0]
        for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
    }


async def restore(archive: Path, url: str) -> None:
    """pg_restore the archive into `url` in one transaction.

    Tables the archive creates that the target already has (a fieldhub started on it once:
    its schema, no rows, checked by refuse_unless_empty) are dropped first, in a transaction of
    their own: pg_restore's --clean cannot drop a partitioned table's partitions' inherited
    keys. Should pg_restore fail then, the target lacks those empty tables, which the next start
    of fieldhub creates again.
    """
    conn = await connect(url)
    try:
        major = conn.get_server_version().major
        clashing = sorted((await archive_tables(archive, major)) & await _tables(conn))
        if clashing:
            async with conn.transaction():
                await conn.execute(f"DROP TABLE IF EXISTS {', '.join(clashing)} CASCADE")
    finally:
        await conn.close()
    tool = find_tool("pg_restore", major)
    await run_tool(
        tool, "--single-transaction", "--no-owner", "--no-privileges", str(archive), url=url
    )
