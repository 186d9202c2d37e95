"""Everything `fieldhub up` keeps in its data dir is private: files 0600, directories 0700 (the
database, its -wal and -shm, the broker's config, access files, persistence and log, the
secrets), an older data dir is tightened at start, and no generated file holds a password of
fieldhub's own MQTT clients in plain text."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from security.data_dirs import files_holding, internal_passwords, shared_paths, stored_readings
from support.fieldhub_process import FieldhubProcess, wait_until

# Demo mode (no credentials) so the simulated fleet's readings reach the store without devices
# having to be provisioned first.
DEMO = {"FIELDHUB_AUTH": "false"}


def _older_version_layout(data_dir: Path) -> list[Path]:
    """What fieldhub left before this hardening (umask 022): 0755 directories, a 0644 database
    and broker log. Returns the paths that must come out private."""
    broker_dir = data_dir / "mosquitto"
    broker_dir.mkdir(parents=True)
    data_dir.chmod(0o755)
    broker_dir.chmod(0o755)
    database = data_dir / "fieldhub.db"
    sqlite3.connect(database).close()  # an empty database, as a first start creates
    database.chmod(0o644)
    log = broker_dir / "mosquitto.log"
    log.write_text("--- an older run's broker log\n")
    log.chmod(0o644)
    return [data_dir, broker_dir, database, log]


def test_demo_run_keeps_everything_private_and_tightens_an_older_data_dir(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    older = _older_version_layout(data_dir)
    with_modes = {path: path.stat().st_mode & 0o777 for path in older}
    assert all(mode & 0o044 for mode in with_modes.values())

    fh = FieldhubProcess(data_dir=data_dir, env=DEMO, extra_args=["--demo"]).start()
    try:
        # Readings stored: the database, its WAL and shared memory exist and have been written.
        wait_until(lambda: stored_readings(fh.db_path) > 0, what="readings from the demo fleet")
        assert (data_dir / "fieldhub.db-wal").exists()
        assert not shared_paths(data_dir)
    finally:
        assert fh.stop() == 0
    # Also after shutdown (the broker saved its persistence, SQLite checkpointed).
    assert (data_dir / "mosquitto" / "persistence" / "mosquitto.db").exists()
    assert not shared_paths(data_dir)
    log = fh.log_path.read_text()
    for path, mode in with_modes.items():
        name = str(path.relative_to(data_dir)) if path != data_dir else str(data_dir)
        said = f"{name} ({mode:04o} -> {mode & 0o700:04o})"
        assert said in log, f"{name} was tightened but the log does not say so:\n{log}"
    assert log.count("private that group or others could read") == 1


def test_generated_files_hold_no_plaintext_client_password(tmp_path: Path) -> None:
    """With authentication on (the default) the broker gets password and ACL files; whatever
    fieldhub generates for its own MQTT clients, their passwords appear only in the secrets file
    (0600 in a 0700 directory), never in mosquitto.conf, the broker's access files, the
    database, or a log."""
    data_dir = tmp_path / "data"
    fh = FieldhubProcess(data_dir=data_dir, env={"FIELDHUB_AUTH": "true"})
    fh.start(wait_connected=False)
    try:
        assert fh.health() is not None
    finally:
        assert fh.stop() == 0
    assert not shared_paths(data_dir)
    config = (data_dir / "mosquitto" / "mosquitto.conf").read_text()
    # No option of the `remote_password` kind: the broker reads hashes from its password file.
    assert not [line for line in config.splitlines() if line.split(" ")[0].endswith("password")]
    passwords = internal_passwords(data_dir)
    assert not files_holding(data_dir, passwords)
