"""What a backup holds, and its manifest.

A backup is a directory (0700, its files 0600: it holds password hashes, the CA's private key
and fieldhub's broker logins):

    manifest.json      what follows, the database's rows per table and a sample of series
                       with their count, min, max and sum (what the restore is verified against)
    fieldhub.db        SQLite: a consistent copy of the database, one file (no -wal)
    fieldhub.pgdump    PostgreSQL: pg_dump's custom format, taken in the snapshot the counts
                       were read in
    files/models/      the model registry (every version, the active one marked)
    files/certs/       the CA and server certificates and keys of `fieldhub certs init`
    files/secrets/     fieldhub's own broker logins (mqtt-clients.json)

Left out, because a start makes them again: `mosquitto/` (its config, password and ACL files are
written from the database and secrets at every start; its persistence holds queued QoS 1
messages and retained messages, which devices send again) and `fieldhub.lock`. Browser sessions
are inside the database and come back with it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fieldhub.store.migrate_outcome import SeriesStats
from fieldhub.store.migrate_verify import SampledSeries, SourceFacts

MANIFEST = "manifest.json"
SQLITE_FILE = "fieldhub.db"
PG_DUMP_FILE = "fieldhub.pgdump"
FILES_DIR = "files"
# The data dir's parts a backup carries besides the database, by their name in `files/`.
PARTS = ("models", "certs", "secrets")
# Raised when the manifest's shape changes; a restore refuses a format it does not know.
FORMAT = 1

Engine = Literal["sqlite", "postgresql"]


class BackupError(RuntimeError):
    """A backup or restore failed; the message says what to do next."""


class BackupRefused(BackupError):
    """Refused before anything was written; the message says what to pass or do instead."""


@dataclass(slots=True)
class Manifest:
    """The backup's description (manifest.json)."""

    engine: Engine
    created_us: int
    fieldhub_version: str
    schema_version: int
    facts: SourceFacts
    parts: list[str] = field(default_factory=list)
    tool: str | None = None  # pg_dump's version line for PostgreSQL
    format: int = FORMAT

    @property
    def database_file(self) -> str:
        return SQLITE_FILE if self.engine == "sqlite" else PG_DUMP_FILE

    def to_json(self) -> str:
        facts = self.facts
        return json.dumps(
            {
                "format": self.format,
                "engine": self.engine,
                "database": self.database_file,
                "created_us": self.created_us,
                "fieldhub_version": self.fieldhub_version,
                "schema_version": self.schema_version,
                "tool": self.tool,
                "parts": self.parts,
                "counts": dict(facts.counts),
                "series_total": facts.series_total,
                # Floats as Python writes them: repr round-trips exactly (inf/nan included).
                "sample": [
                    {
                        "device_pk": s.device_pk,
                        "metric_pk": s.metric_pk,
                        "device": s.device,
                        "metric": s.metric,
                        "count": s.stats.count,
                        "min": s.stats.min,
                        "max": s.stats.max,
                        "sum": s.stats.sum,
                        "magnitude": s.magnitude,
                    }
                    for s in facts.sample
                ],
            },
            indent=2,
        )

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """The manifest of the backup in `directory`; BackupRefused when there is none or it
        cannot be read."""
        path = directory / MANIFEST
        if not path.is_file():
            raise BackupRefused(
                f"{directory} is not a fieldhub backup (no {MANIFEST}): pass the directory "
                "`fieldhub backup` wrote"
            )
        try:
            data = json.loads(path.read_text())
            if data["format"] != FORMAT:
                raise BackupRefused(
                    f"{directory} has backup format {data['format']}; this fieldhub reads "
                    f"format {FORMAT}: restore it with the fieldhub version that made it "
                    f"({data.get('fieldhub_version')})"
                )
            sample = tuple(
                SampledSeries(
                    s["device_pk"],
                    s["metric_pk"],
                    s["device"],
                    s["metric"],
                    SeriesStats(s["count"], s["min"], s["max"], s["sum"]),
                    s["magnitude"],
                )
                for s in data["sample"]
            )
            return cls(
                engine=data["engine"],
                created_us=data["created_us"],
                fieldhub_version=data["fieldhub_version"],
                schema_version=data["schema_version"],
                facts=SourceFacts(data["counts"], sample, data["series_total"]),
                parts=list(data["parts"]),
                tool=data.get("tool"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackupRefused(f"{path} cannot be read ({exc!r}): the backup is damaged") from None

    def write(self, directory: Path) -> None:
        write_private(directory / MANIFEST, self.to_json().encode())


def write_private(path: Path, data: bytes) -> None:
    """Write `path` as a new 0600 file, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
