"""The scheduled backup: rotation keeps the newest N, failures are logged and counted, and
`fieldhub up` makes them on its own timer (a real process)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from fieldhub.backup.make import make_backup
from fieldhub.backup.schedule import NAME_PREFIX, BackupJob
from fieldhub.broker import MosquittoProcess
from fieldhub.config import Settings
from fieldhub.store import WriteBatch, open_store
from support.fieldhub_process import FieldhubProcess, wait_until
from support.store_rows import T0, msg

KEEP = 2


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


async def sqlite_install(data_dir: Path) -> str:
    """A SQLite database in `data_dir` holding one reading."""
    url = f"sqlite:///{data_dir / 'fieldhub.db'}"
    store = open_store(url)
    await store.open()
    await store.write_batch(WriteBatch(decoded=[msg("dev-1", T0, [("t", T0, 1.5)])]))
    await store.close()
    return url


def sample(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    assert value is not None, name
    return value


async def test_rotation_keeps_the_newest_backups_and_leaves_others_alone(
    tmp_path: Path, data_dir: Path
) -> None:
    """Four runs with keep=2 leave the last two; a backup made by hand in the same directory
    stays; the metrics say when the last one succeeded."""
    url = await sqlite_install(data_dir)
    backups = tmp_path / "backups"
    settings = Settings(data_dir=data_dir, db=url, backup_dir=backups, backup_keep=KEEP)
    registry = CollectorRegistry()
    job = BackupJob(settings, registry=registry)
    backups.mkdir()
    await make_backup(settings, backups / "by-hand")
    made = [await job.run_once() for _ in range(4)]
    assert all(path is not None for path in made)
    assert sorted(p.name for p in backups.iterdir()) == sorted(
        ["by-hand", *(p.name for p in made[-KEEP:] if p is not None)]
    )
    assert sample(registry, "fieldhub_backup_failures_total") == 0
    assert sample(registry, "fieldhub_backup_last_success_timestamp_seconds") > 0
    assert sample(registry, "fieldhub_backup_last_bytes") > 0


async def test_a_failed_backup_is_logged_counted_and_keeps_the_earlier_ones(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The database gone: the run fails with the reason in the log, the failure counter goes
    up, no partial directory stays, and the earlier backup is kept."""
    url = await sqlite_install(data_dir)
    backups = tmp_path / "backups"
    settings = Settings(data_dir=data_dir, db=url, backup_dir=backups, backup_keep=1)
    registry = CollectorRegistry()
    job = BackupJob(settings, registry=registry)
    kept = await job.run_once()
    assert kept is not None
    (data_dir / "fieldhub.db").unlink()
    with caplog.at_level(logging.ERROR, logger="fieldhub.backup"):
        assert await job.run_once() is None
    assert sample(registry, "fieldhub_backup_failures_total") == 1
    assert "scheduled backup into" in caplog.text
    assert "no database at" in caplog.text
    assert [p.name for p in backups.iterdir()] == [kept.name]


def test_fieldhub_up_makes_scheduled_backups_and_rotates_them(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    """FIELDHUB_BACKUP_* on a running fieldhub: backups appear on the interval, the oldest go."""
    backups = tmp_path / "backups"
    fh = FieldhubProcess(
        data_dir=tmp_path / "data",
        mqtt_url=mosquitto.url,
        env={
            "FIELDHUB_BACKUP_DIR": str(backups),
            "FIELDHUB_BACKUP_EVERY_H": str(0.5 / 3600),  # every half second
            "FIELDHUB_BACKUP_KEEP": str(KEEP),
        },
    ).start()
    try:
        wait_until(lambda: "older (keeping 2)" in fh.log_tail(200), what="a rotation")
        assert fh.metric("fieldhub_backup_failures_total") == 0
        assert fh.metric("fieldhub_backup_last_success_timestamp_seconds") > 0
    finally:
        assert fh.stop() == 0
    complete = [p for p in backups.iterdir() if p.name.startswith(NAME_PREFIX)]
    assert len(complete) == KEEP
    assert all((p / "manifest.json").is_file() for p in complete)
    # Stopping mid-backup leaves no partial directory behind.
    assert not [p for p in backups.iterdir() if p.name.startswith(".")]
