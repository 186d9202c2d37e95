"""Backup and restore on each engine, in process: SQLite's online backup and PostgreSQL's
pg_dump/pg_restore (on the suite's private cluster), verified with migrate's counts and sums."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from fieldhub.backup import pg_tools
from fieldhub.backup.contents import BackupError, BackupRefused
from fieldhub.backup.make import make_backup
from fieldhub.backup.restore import restore_backup
from fieldhub.config import Settings
from fieldhub.store import WriteBatch, open_store
from support.postgres import PostgresServer
from support.store_rows import T0, S, msg

BACKENDS = ["sqlite", "postgresql"]
DEVICES = 5
READINGS_EACH = 200


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def new_url(engine: str, request: pytest.FixtureRequest, path: Path) -> str:
    """An empty database of `engine` (SQLite: a file at `path`)."""
    if engine == "sqlite":
        return f"sqlite:///{path}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


async def fill(url: str) -> None:
    """Readings of DEVICES devices with two metrics each, values chosen so sums are inexact."""
    store = open_store(url)
    await store.open()
    try:
        for i in range(READINGS_EACH):
            at = T0 + i * S
            await store.write_batch(
                WriteBatch(
                    decoded=[
                        msg(f"dev-{d}", at, [("t", at, i * 0.1 + d), ("h", at, -i / 3)])
                        for d in range(DEVICES)
                    ]
                )
            )
    finally:
        await store.close()


async def open_once(url: str) -> None:
    """What a first start leaves: the schema, no rows."""
    store = open_store(url)
    await store.open()
    await store.close()


@pytest_asyncio.fixture(loop_scope="function")
async def filled(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Settings]:
    """Settings of an install whose database holds readings and whose data dir has models."""
    data_dir = tmp_path / "source"
    data_dir.mkdir()
    url = new_url(engine, request, data_dir / "fieldhub.db")
    await fill(url)
    model = data_dir / "models" / "window" / "1"
    model.mkdir(parents=True)
    (model / "model.onnx").write_bytes(b"onnx bytes")
    (data_dir / "models" / "window" / "ACTIVE").write_text("1")
    yield Settings(data_dir=data_dir, db=url)


async def test_backup_and_restore_round_trip(
    engine: str, filled: Settings, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A backup restored into an install that started once (schema, no rows) holds the same
    rows per table and series stats, and a store opened on it reads the readings."""
    dest = tmp_path / "backup"
    made = await make_backup(filled, dest)
    counts = made.manifest.facts.counts
    assert counts["readings"] == DEVICES * READINGS_EACH * 2
    assert counts["devices"] == DEVICES
    assert len(made.manifest.facts.sample) == DEVICES * 2
    assert made.manifest.parts == ["models"]
    if engine == "sqlite":
        assert made.verification is not None
        assert made.verification.ok
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700

    target_dir = tmp_path / "target"
    target_dir.mkdir()
    target = Settings(data_dir=target_dir, db=new_url(engine, request, target_dir / "fieldhub.db"))
    await open_once(target.db_url)
    restored = await restore_backup(target, dest)
    check = restored.verification
    assert check.ok
    assert {c.table: c.target for c in check.counts} == counts
    assert len(check.series) == DEVICES * 2
    assert (target_dir / "models" / "window" / "1" / "model.onnx").read_bytes() == b"onnx bytes"

    store = open_store(target.db_url)
    await store.open()
    try:
        devices = await store.list_devices(
            profile=None, presence=None, search=None, limit=100, after=None, now_us=T0
        )
        assert sorted(d.device_id for d in devices) == [f"dev-{d}" for d in range(DEVICES)]
    finally:
        await store.close()
    # Restoring again into what now holds the data is refused.
    with pytest.raises(BackupRefused, match="already holds fieldhub data"):
        await restore_backup(target, dest)


async def test_restore_refuses_a_backup_of_the_other_engine(
    engine: str, filled: Settings, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A SQLite backup into PostgreSQL (or back) is refused with what to do instead."""
    dest = tmp_path / "backup"
    await make_backup(filled, dest)
    other = "postgresql" if engine == "sqlite" else "sqlite"
    target = Settings(
        data_dir=tmp_path / "target", db=new_url(other, request, tmp_path / "target.db")
    )
    with pytest.raises(BackupRefused, match="fieldhub migrate"):
        await restore_backup(target, dest)
    assert not (tmp_path / "target.db").exists()


async def test_postgres_restore_refuses_a_database_in_use(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Another session on the target database (a running fieldhub) refuses the restore."""
    source = Settings(data_dir=tmp_path / "source", db=postgres_server.new_database())
    await fill(source.db_url)
    await make_backup(source, tmp_path / "backup")
    target = Settings(data_dir=tmp_path / "target", db=postgres_server.new_database())
    other = await asyncpg.connect(target.db_url)
    try:
        with pytest.raises(BackupRefused, match="other session"):
            await restore_backup(target, tmp_path / "backup")
    finally:
        await other.close()


def fake_tool(directory: Path, name: str, version: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
    path.chmod(0o755)


def test_a_missing_pg_dump_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pg_dump anywhere: the error names it and the package of the server's version."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(pg_tools, "DEBIAN_BIN_GLOB", str(tmp_path / "none" / "*" / "bin"))
    with pytest.raises(BackupError, match="pg_dump was not found") as caught:
        pg_tools.find_tool("pg_dump", 17)
    assert "apt-get install postgresql-client-17" in str(caught.value)


def test_a_pg_dump_older_than_the_server_is_refused_and_a_newer_one_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dump 14 on PATH cannot dump a 17 server: refused, unless a 17 is installed in the
    Debian layout, which is then used."""
    fake_tool(tmp_path / "path", "pg_dump", "14.9")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setattr(pg_tools, "DEBIAN_BIN_GLOB", str(tmp_path / "lib" / "*" / "bin"))
    with pytest.raises(BackupError, match=r"pg_dump 14 .* is older than the server"):
        pg_tools.find_tool("pg_dump", 17)
    fake_tool(tmp_path / "lib" / "17" / "bin", "pg_dump", "17.2")
    found = pg_tools.find_tool("pg_dump", 17)
    assert found.path == tmp_path / "lib" / "17" / "bin" / "pg_dump"
    assert found.major == 17
