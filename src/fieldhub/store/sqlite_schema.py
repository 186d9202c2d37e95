"""SQLite schema as numbered migrations.

A small versioned migrator instead of Alembic: the two engines need different DDL (WITHOUT ROWID
here, time partitions in PostgreSQL), there are no ORM models to autogenerate from, and each
migration is a few statements a reviewer reads as SQL. `schema_migrations` records what ran.
"""

from __future__ import annotations

from fieldhub.store.rollup_schema import rollup_migration

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "devices, metrics, readings, dead letters, presence history, retained digests",
        """
        CREATE TABLE devices (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            profile TEXT NOT NULL,
            first_seen_us INTEGER NOT NULL,
            last_seen_us INTEGER NOT NULL,
            presence TEXT NOT NULL DEFAULT 'unknown',
            presence_changed_us INTEGER,
            stale_after_s INTEGER NOT NULL,
            attributes TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE metrics (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE
        );
        -- The narrow time-series table: (device, metric, ts) is the identity of a reading, so a
        -- redelivered message with its own time lands once. WITHOUT ROWID stores rows in the
        -- primary-key B-tree itself: one index instead of two.
        CREATE TABLE readings (
            device_id INTEGER NOT NULL,
            metric_id INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            value REAL NOT NULL,
            received_at INTEGER NOT NULL,
            PRIMARY KEY (device_id, metric_id, ts)
        ) WITHOUT ROWID;
        -- Which metrics each device has reported. The writer inserts a pair only the first time
        -- it sees it. Latest values are read from readings by primary-key seek, not maintained
        -- per batch: an upsert per series per batch cost as much as the readings themselves.
        CREATE TABLE device_metrics (
            device_id INTEGER NOT NULL,
            metric_id INTEGER NOT NULL,
            PRIMARY KEY (device_id, metric_id)
        ) WITHOUT ROWID;
        CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            received_at INTEGER NOT NULL,
            topic TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            payload BLOB NOT NULL,
            size INTEGER NOT NULL,
            device_uid TEXT,
            profile TEXT
        );
        CREATE INDEX dead_letters_reason ON dead_letters (reason, id);
        CREATE INDEX dead_letters_device ON dead_letters (device_uid, id);
        CREATE TABLE presence_events (
            device_id INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            state TEXT NOT NULL,
            PRIMARY KEY (device_id, ts)
        ) WITHOUT ROWID;
        CREATE TABLE retained_digests (
            topic TEXT PRIMARY KEY,
            digest BLOB NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        2,
        "dead letters by time: the dashboard counts the last hour's",
        """
        CREATE INDEX dead_letters_received ON dead_letters (received_at);
        """,
    ),
    (
        3,
        "commands with their history; each device's command format and topic id spelling",
        """
        ALTER TABLE devices ADD COLUMN command_format TEXT;
        ALTER TABLE devices ADD COLUMN topic_id TEXT;
        -- One row per command; `uid` is the id on the wire (a UUID or the caller's idempotency
        -- key), unique per device because acks are matched on the device's own ack topic.
        CREATE TABLE commands (
            id INTEGER PRIMARY KEY,
            device_id INTEGER NOT NULL,
            uid TEXT NOT NULL,
            name TEXT NOT NULL,
            params TEXT NOT NULL,
            format TEXT NOT NULL,
            topic TEXT NOT NULL,
            state TEXT NOT NULL,
            created_us INTEGER NOT NULL,
            updated_us INTEGER NOT NULL,
            timeout_s REAL NOT NULL,
            expires_us INTEGER,
            sent_us INTEGER,
            finished_us INTEGER,
            result TEXT,
            error TEXT,
            decided_by TEXT,
            UNIQUE (device_id, uid)
        );
        CREATE INDEX commands_device_created ON commands (device_id, created_us, uid);
        -- Only the few commands not yet final, loaded at every start.
        CREATE INDEX commands_active ON commands (state) WHERE state IN ('pending', 'sent');
        CREATE TABLE command_history (
            command_id INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            state TEXT NOT NULL,
            at_us INTEGER NOT NULL,
            detail TEXT NOT NULL,
            PRIMARY KEY (command_id, seq)
        ) WITHOUT ROWID;
        """,
    ),
    (
        4,
        "per-minute and per-hour rollups (count, sum, min, max, first, last) of what is stored",
        rollup_migration(ids="INTEGER", count="INTEGER", real="REAL", suffix=" WITHOUT ROWID"),
    ),
]
