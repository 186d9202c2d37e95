"""What only the SQLite store has: pragmas, the migrator, the file and its URL."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import pytest_asyncio

from fieldhub.protocol.messages import Decoded, Reading
from fieldhub.store import StoreError, WriteBatch, open_store
from fieldhub.store.sqlite import SqliteStore
from fieldhub.store.sqlite_schema import MIGRATIONS

T0 = 1_700_000_000_000_000


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to inspect the file behind the store's back."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "t.db"


@pytest_asyncio.fixture(loop_scope="function")
async def sqlite_store(db_path: Path) -> AsyncIterator[SqliteStore]:
    store = open_store(f"sqlite:///{db_path}", stale_after_s={"native": 120})
    assert isinstance(store, SqliteStore)
    await store.open()
    yield store
    await store.close()


async def test_wal_and_synchronous_normal(sqlite_store: SqliteStore, db_path: Path) -> None:
    """The file is in WAL mode; the writer commits with synchronous=NORMAL (1)."""
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    writer = sqlite_store._writer
    assert writer is not None
    assert writer.execute("PRAGMA synchronous").fetchone()[0] == 1
    assert writer.execute("PRAGMA busy_timeout").fetchone()[0] > 0


async def test_readers_see_commits_while_a_reader_transaction_is_open(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    """WAL: an open read transaction elsewhere neither blocks the writer nor hides its commit."""
    with raw(db_path) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM readings").fetchone()
        await sqlite_store.write_batch(
            WriteBatch(decoded=[Decoded("d", "native", "telemetry", T0, [Reading("t", T0, 1.0)])])
        )
        conn.execute("COMMIT")
    assert [m.name for m in await sqlite_store.device_metrics("d")] == ["t"]


async def test_migrations_recorded_once(db_path: Path) -> None:
    """Every migration runs once and is recorded; reopening runs none again and keeps data."""
    url = f"sqlite:///{db_path}"
    first = open_store(url)
    await first.open()
    await first.write_batch(
        WriteBatch(decoded=[Decoded("d", "native", "telemetry", T0, [Reading("t", T0, 1.0)])])
    )
    await first.close()
    with raw(db_path) as conn:
        recorded = conn.execute("SELECT version, applied_us FROM schema_migrations").fetchall()
    assert [v for v, _ in recorded] == [v for v, _, _ in MIGRATIONS]

    second = open_store(url)
    await second.open()
    try:
        assert await second.get_device("d", now_us=T0) is not None
    finally:
        await second.close()
    with raw(db_path) as conn:
        assert (
            conn.execute("SELECT version, applied_us FROM schema_migrations").fetchall() == recorded
        )


async def test_failed_migration_rolls_back(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails halfway leaves neither its tables nor its version behind."""
    broken = (
        99,
        "broken on purpose",
        "CREATE TABLE extra (x INTEGER); INSERT INTO nowhere VALUES (1)",
    )
    monkeypatch.setattr("fieldhub.store.sqlite.MIGRATIONS", [*MIGRATIONS, broken])
    store = open_store(f"sqlite:///{db_path}")

    with pytest.raises(StoreError, match="migration 99"):
        await store.open()
    await store.close()

    with raw(db_path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert "extra" not in tables
    assert "devices" in tables
    assert versions == [v for v, _, _ in MIGRATIONS]


async def test_newer_schema_refused(db_path: Path) -> None:
    """A file migrated by a newer fieldhub is refused with a message saying to upgrade."""
    store = open_store(f"sqlite:///{db_path}")
    await store.open()
    await store.close()
    with raw(db_path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (9999, 'from the future', 0)")

    newer = open_store(f"sqlite:///{db_path}")
    with pytest.raises(StoreError, match="upgrade fieldhub"):
        await newer.open()
    await newer.close()


@pytest.fixture
def garbage_file(db_path: Path) -> Path:
    db_path.write_bytes(b"this is not a database, just text " * 100)
    return db_path


async def test_not_a_database_refused(garbage_file: Path) -> None:
    """A file that is not SQLite gives StoreError naming the file."""
    store = open_store(f"sqlite:///{garbage_file}")

    with pytest.raises(StoreError, match=str(garbage_file)):
        await store.open()
    await store.close()


async def test_missing_directories_created(tmp_path: Path) -> None:
    """The database's parent directories are created on open."""
    path = tmp_path / "a" / "b" / "fieldhub.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    await store.ping()
    await store.close()
    assert path.exists()


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://t.db", "mysql://localhost/x", "t.db"])
def test_bad_urls_refused(url: str) -> None:
    """URLs the store cannot use raise StoreError before anything is opened."""
    with pytest.raises(StoreError):
        open_store(url)
