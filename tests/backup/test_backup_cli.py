"""`fieldhub backup` of a running, ingesting `fieldhub up` (real Mosquitto, real processes) and
`fieldhub restore` into an empty data dir that fieldhub then runs on."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import threading
import uuid
from pathlib import Path

from fieldhub.broker import MosquittoProcess
from fieldhub.store.migrate_tables import TABLES
from support.fieldhub_process import FIELDHUB, FieldhubProcess, wait_until
from support.mqtt import connected_publisher, count_metric, publish_all

# Enough rows that the backup's copy takes several steps' worth of pages alongside the writes.
DEVICES = 20
BEFORE = 3_000
CLI_TIMEOUT_S = 120


def fieldhub(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the `fieldhub` command as a user would."""
    return subprocess.run(
        [str(FIELDHUB), *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
        env={"FIELDHUB_AUTH": "false", "PATH": "/usr/bin:/bin"},
    )


def table_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            t.name: conn.execute(f"SELECT count(*) FROM {t.name}").fetchone()[0] for t in TABLES
        }
    finally:
        conn.close()


def messages(prefix: str, start: int, n: int) -> list[tuple[str, bytes]]:
    return [
        (f"devices/{prefix}-{i % DEVICES:02d}/telemetry", b'{"temperature": %d}' % i)
        for i in range(start, start + n)
    ]


def private_tree(root: Path) -> None:
    """Every directory under `root` 0700 and every file 0600."""
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {oct(mode)}"


def test_backup_while_ingesting_then_restore_into_an_empty_data_dir(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    """A backup taken while readings pour in is consistent and verified; restored into a new
    data dir it holds exactly the manifest's rows, and fieldhub runs on it and ingests."""
    live = tmp_path / "live"
    assert fieldhub("certs", "init", "--data-dir", str(live)).returncode == 0
    fh = FieldhubProcess(data_dir=live, mqtt_url=mosquitto.url).start()
    try:  # stopped on failure too: a fieldhub left running keeps its broker session
        prefix = f"bk{uuid.uuid4().hex[:6]}"
        publisher = connected_publisher(mosquitto.url)
        publish_all(publisher, messages(prefix, 0, BEFORE))
        wait_until(lambda: count_metric(fh.db_path, prefix, "temperature") == BEFORE, what="rows")

        # Readings keep arriving while the backup runs.
        stop = threading.Event()
        sent = [BEFORE]

        def keep_publishing() -> None:
            while not stop.is_set():
                publish_all(publisher, messages(prefix, sent[0], 50))
                sent[0] += 50

        writer = threading.Thread(target=keep_publishing, name="test.publisher")
        writer.start()
        try:
            wait_until(
                lambda: count_metric(fh.db_path, prefix, "temperature") > BEFORE,
                what="ingest under way",
            )
            dest = tmp_path / "backups" / "one"
            dest.parent.mkdir()
            made = fieldhub("backup", str(dest), "--data-dir", str(live))
        finally:
            stop.set()
            writer.join()
        assert made.returncode == 0, made.stderr
        assert "0 differ" in made.stdout, made.stdout
        total = sent[0]
        wait_until(
            lambda: count_metric(fh.db_path, prefix, "temperature") == total, what="all rows"
        )
        assert fh.stop() == 0
    finally:
        fh.stop()
    publisher.stop()

    manifest = json.loads((dest / "manifest.json").read_text())
    assert BEFORE <= manifest["counts"]["readings"] <= total
    assert manifest["parts"] == ["models", "certs"]
    assert sorted(p.name for p in dest.iterdir()) == ["fieldhub.db", "files", "manifest.json"]
    private_tree(dest)
    # The copy is one self-contained file: no WAL beside it.
    assert table_counts(dest / "fieldhub.db") == manifest["counts"]

    restored = tmp_path / "restored"
    done = fieldhub("restore", str(dest), "--data-dir", str(restored))
    assert done.returncode == 0, done.stderr
    assert "0 differ" in done.stdout, done.stdout
    assert "DIFFERS" not in done.stdout
    assert table_counts(restored / "fieldhub.db") == manifest["counts"]
    assert (restored / "certs" / "ca.key").read_bytes() == (live / "certs" / "ca.key").read_bytes()
    private_tree(restored / "certs")
    private_tree(restored / "models")

    # fieldhub runs on the restored install: it serves what was backed up and ingests more.
    again = FieldhubProcess(data_dir=restored, mqtt_url=mosquitto.url).start()
    try:
        devices = again.get("/api/v1/devices", limit=100).json()["data"]
        assert len([d for d in devices if d["id"].startswith(prefix)]) == DEVICES
        publisher = connected_publisher(mosquitto.url)
        publish_all(publisher, messages(prefix, total, 10))
        publisher.stop()
        expected = manifest["counts"]["readings"] + 10
        wait_until(
            lambda: count_metric(again.db_path, prefix, "temperature") == expected,
            what="new readings on the restored install",
        )
        # A restore into an install that runs is refused, and changes nothing.
        before = table_counts(again.db_path)
        refused = fieldhub("restore", str(dest), "--data-dir", str(restored))
        assert refused.returncode == 2
        assert "fieldhub is running on" in refused.stderr
        assert table_counts(again.db_path) == before
    finally:
        assert again.stop() == 0


def test_restore_is_refused_into_an_install_that_holds_data(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    """fieldhub stopped but its database holds readings: the restore refuses and changes
    nothing, neither the database nor the data dir's files."""
    live = tmp_path / "live"
    fh = FieldhubProcess(data_dir=live, mqtt_url=mosquitto.url).start()
    try:  # stopped on failure too: a fieldhub left running keeps its broker session
        prefix = f"bk{uuid.uuid4().hex[:6]}"
        publisher = connected_publisher(mosquitto.url)
        publish_all(publisher, messages(prefix, 0, 40))
        publisher.stop()
        wait_until(lambda: count_metric(fh.db_path, prefix, "temperature") == 40, what="rows")
        dest = tmp_path / "backup"
        assert fieldhub("backup", str(dest), "--data-dir", str(live)).returncode == 0
        assert fh.stop() == 0
    finally:
        fh.stop()

    def snapshot() -> dict[str, bytes]:
        return {
            str(p.relative_to(live)): p.read_bytes()
            for p in sorted(live.rglob("*"))
            # -shm is SQLite's shared-memory index, which any reader updates (read marks).
            if p.is_file() and p.name not in ("fieldhub.log", "fieldhub.db-shm")
        }

    before = snapshot()
    refused = fieldhub("restore", str(dest), "--data-dir", str(live))
    assert refused.returncode == 2
    assert "already holds fieldhub data (rows in" in refused.stderr
    assert "readings" in refused.stderr
    assert snapshot() == before
    # Not a backup at all: refused with what to pass.
    wrong = fieldhub("restore", str(live), "--data-dir", str(tmp_path / "empty"))
    assert wrong.returncode == 2
    assert "is not a fieldhub backup" in wrong.stderr
    assert not (tmp_path / "empty").exists()
    # And a backup refuses a DEST that holds something.
    taken = fieldhub("backup", str(dest), "--data-dir", str(live))
    assert taken.returncode == 2
    assert "is not an empty directory" in taken.stderr
