"""SQLite schema as numbered migrations.

A small versioned migrator instead of Alembic: the two engines need different DDL (WITHOUT ROWID
here, time partitions in PostgreSQL), there are no ORM models to autogenerate from, and each
migration is a few statements a reviewer reads as SQL. `schema_migrations` records what ran.
"""

from __future__ import annotations

from fieldhub.store.rollup_schema import rollup_migration

# What a stored `uptime_s` value of the FastAPI/RabbitMQ stack's node is multiplied by to become
# `uptime_ms`. The node's `uptime` is `millis()` (IoT_Platform_Node.ino: readAndPublishSensors,
# publishHeartbeat, publishStatus), and ingest only renamed it (`uptime` -> `uptime_s`), never
# scaled it: the numbers stored are already milliseconds, under the wrong name. Multiplying them
# by 1000 would make every real node's history 1000 times too long, so the migration relabels.
FASTAPI_UPTIME_S_TO_MS = 1


def fastapi_uptime_migration(factor: int = FASTAPI_UPTIME_S_TO_MS) -> str:
    """SQL (the same on both engines) that moves `uptime_s` of devices commanded in the `fastapi`
    format to the metric `uptime_ms`, times `factor`: readings, both rollup tables and
    device_metrics. Other devices' `uptime_s` stays as it is.

    A device that already has `uptime_ms` (device_metrics lists every pair ever stored; retention
    never prunes it) keeps its `uptime_s` untouched: merging two series could collide on a time
    or a rollup bucket, and moving part of one would leave rollups that disagree with their
    readings. `n` and the times of a rollup do not change; its sums, extremes and first/last
    values scale (factor > 0 keeps lo <= hi).
    """
    s = "(SELECT id FROM metrics WHERE name = 'uptime_s')"
    ms = "(SELECT id FROM metrics WHERE name = 'uptime_ms')"
    # Evaluated before device_metrics changes (the last statement), so the same set throughout.
    moving = f"""(SELECT device_id FROM device_metrics WHERE metric_id = {s}
            AND device_id IN (SELECT id FROM devices WHERE command_format = 'fastapi')
            AND device_id NOT IN (SELECT device_id FROM device_metrics WHERE metric_id = {ms}))"""
    scale = ", ".join(
        f"{column} = {column} * {factor}"
        for column in ("total", "lo", "hi", "first_value", "last_value")
    )
    rollups = "".join(
        f"""
        UPDATE {table} SET metric_id = {ms}, {scale}
        WHERE metric_id = {s} AND device_id IN {moving};"""
        for table in ("rollup_minute", "rollup_hour")
    )
    return f"""
        INSERT INTO metrics (name)
        SELECT 'uptime_ms' WHERE EXISTS {moving}
        ON CONFLICT (name) DO NOTHING;
        UPDATE readings SET metric_id = {ms}, value = value * {factor}
        WHERE metric_id = {s} AND device_id IN {moving};{rollups}
        UPDATE device_metrics SET metric_id = {ms}
        WHERE metric_id = {s} AND device_id IN {moving};
        """


# Readings stored but not yet added to the rollups (store/writes.py, `fold_rollups`). A batch
# appending here dirties a few pages at the ends of the table and of its index, where updating
# both rollup tables dirtied two pages per series it touched, each written to the WAL at every
# commit (most of ingest's writes at 10,000 msg/s, bench/README.md). Folded a slice of the
# devices at a time (`slice`, the device id modulo writes.FOLD_SLICES), found by its index. No
# index by series: the table holds about a second of readings, which series reads scan.
ROLLUP_PENDING_MIGRATION = (
    10,
    "readings not yet in the rollups: folded in every second instead of at every batch",
    """
    CREATE TABLE rollup_pending (
        slice INTEGER NOT NULL,
        device_id INTEGER NOT NULL,
        metric_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        value REAL NOT NULL
    );
    CREATE INDEX rollup_pending_slice ON rollup_pending (slice);
    """,
)

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
    (
        5,
        "the FastAPI stack's uptime is milliseconds: its devices' uptime_s becomes uptime_ms",
        fastapi_uptime_migration(),
    ),
    (
        6,
        "security: users, sessions, API tokens, the audit log, device credentials",
        """
        -- No foreign keys, as elsewhere in this schema: the scripts (security_rows.py) keep
        -- the references, and `fieldhub migrate` reloads tables without ordering constraints.
        -- `disabled` is 0/1 in both engines (not BOOLEAN in PostgreSQL): the migration copies
        -- SQLite's integers as they are.
        CREATE TABLE users (
            username TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_us INTEGER NOT NULL,
            updated_us INTEGER NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE TABLE sessions (
            token_hash TEXT PRIMARY KEY,
            username TEXT NOT NULL,
            csrf_token TEXT NOT NULL,
            created_us INTEGER NOT NULL,
            last_seen_us INTEGER NOT NULL,
            expires_us INTEGER NOT NULL,
            address TEXT
        ) WITHOUT ROWID;
        -- Signing a user out everywhere (a password change, a deleted user).
        CREATE INDEX sessions_username ON sessions (username);
        CREATE TABLE api_tokens (
            token_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            token_hash TEXT NOT NULL,
            role TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_us INTEGER NOT NULL,
            expires_us INTEGER,
            last_used_us INTEGER,
            revoked_us INTEGER
        ) WITHOUT ROWID;
        -- Append-only. AUTOINCREMENT: a sequence number is never handed out twice, even after
        -- the newest rows were deleted, so a seq names one entry for good.
        CREATE TABLE audit_log (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at_us INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            address TEXT,
            outcome TEXT NOT NULL,
            detail TEXT NOT NULL
        );
        CREATE INDEX audit_log_at ON audit_log (at_us);
        -- One actor's entries, newest first, page by page.
        CREATE INDEX audit_log_actor ON audit_log (actor, seq);
        -- `device_uid`: the canonical device id as text (as in dead_letters), not a reference
        -- to devices: a device is provisioned before it ever reports.
        CREATE TABLE device_credentials (
            device_uid TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            created_us INTEGER NOT NULL,
            rotated_us INTEGER NOT NULL,
            revoked_us INTEGER
        ) WITHOUT ROWID;
        """,
    ),
    (
        7,
        "rules and alarms: rule versions, evaluation state, alarms and their events, notifications",
        """
        -- No foreign keys, as elsewhere (migration 6 says why). Documents, states and details
        -- are JSON text (JSONB in PostgreSQL); `enabled` is 0/1 in both engines.
        -- A rule's current version and deletion; its number grows by one per stored version
        -- (rule_rows.put_rule_version upserts this row to draw it).
        CREATE TABLE rules (
            rule_id TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            deleted_us INTEGER
        ) WITHOUT ROWID;
        CREATE TABLE rule_versions (
            rule_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            document TEXT NOT NULL,
            enabled INTEGER NOT NULL,
            author TEXT NOT NULL,
            created_us INTEGER NOT NULL,
            PRIMARY KEY (rule_id, version)
        ) WITHOUT ROWID;
        -- `device_uid`: the canonical device id as text (as in device_credentials): a rule's
        -- no-data state may concern a device whose rows are gone.
        CREATE TABLE rule_state (
            rule_id TEXT NOT NULL,
            device_uid TEXT NOT NULL,
            state TEXT NOT NULL,
            updated_us INTEGER NOT NULL,
            PRIMARY KEY (rule_id, device_uid)
        ) WITHOUT ROWID;
        CREATE TABLE alarms (
            alarm_id TEXT PRIMARY KEY,
            rule_id TEXT NOT NULL,
            device_uid TEXT NOT NULL,
            severity TEXT NOT NULL,
            state TEXT NOT NULL,
            raised_us INTEGER NOT NULL,
            acked_us INTEGER,
            acked_by TEXT,
            ack_comment TEXT,
            cleared_us INTEGER,
            cleared_by TEXT,
            last_notified_us INTEGER,
            notifications INTEGER NOT NULL DEFAULT 0,
            escalated_us INTEGER
        ) WITHOUT ROWID;
        -- At most one open alarm per (rule, device), decided by the database: two evaluations
        -- raising at once store one (rule_rows.open_alarm). Also the open alarms' index.
        CREATE UNIQUE INDEX alarms_open ON alarms (rule_id, device_uid) WHERE state <> 'cleared';
        CREATE INDEX alarms_raised ON alarms (raised_us, alarm_id);
        -- A device's and a rule's alarm history, newest first.
        CREATE INDEX alarms_device ON alarms (device_uid, raised_us);
        CREATE INDEX alarms_rule ON alarms (rule_id, raised_us);
        -- AUTOINCREMENT: a seq names one entry for good (as audit_log's).
        CREATE TABLE alarm_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            alarm_id TEXT NOT NULL,
            at_us INTEGER NOT NULL,
            state TEXT NOT NULL,
            actor TEXT NOT NULL,
            comment TEXT
        );
        CREATE INDEX alarm_events_alarm ON alarm_events (alarm_id, seq);
        CREATE TABLE notification_log (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at_us INTEGER NOT NULL,
            rule_id TEXT NOT NULL,
            alarm_id TEXT,
            kind TEXT NOT NULL,
            target TEXT NOT NULL,
            outcome TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            detail TEXT NOT NULL
        );
        CREATE INDEX notification_log_at ON notification_log (at_us);
        CREATE INDEX notification_log_rule ON notification_log (rule_id, seq);
        CREATE INDEX notification_log_alarm ON notification_log (alarm_id, seq);
        """,
    ),
    (
        8,
        "ml: the window loop's decisions, and its guard configuration and state per device",
        """
        -- The window-control loop (issue 17). No foreign keys, as elsewhere (migration 6 says
        -- why); `device_uid` is the canonical device id as text (as in rule_state). JSON values
        -- (inputs, zscores, verdicts, request, config, state) are text here, JSONB in PostgreSQL;
        -- the nullable ones are SQL NULL when absent, never the JSON text `null`.
        -- AUTOINCREMENT: a seq names one decision for good (the list's cursor), even after
        -- retention deleted the newest rows.
        CREATE TABLE ml_decisions (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            decision_id TEXT NOT NULL UNIQUE,
            device_uid TEXT NOT NULL,
            at_us INTEGER NOT NULL,
            trigger TEXT NOT NULL,
            reason TEXT NOT NULL,
            inputs TEXT NOT NULL,
            zscores TEXT,
            model_name TEXT,
            model_version INTEGER,
            position REAL,
            confidence REAL,
            verdicts TEXT NOT NULL,
            outcome TEXT NOT NULL,
            target_position INTEGER,
            command_id TEXT,
            latency_us INTEGER,
            request TEXT
        );
        -- A device's decisions newest first, page by page (all of them: the primary key).
        CREATE INDEX ml_decisions_device ON ml_decisions (device_uid, seq);
        -- The statistics since a time, and retention by age.
        CREATE INDEX ml_decisions_at ON ml_decisions (at_us);
        CREATE TABLE ml_devices (
            device_uid TEXT PRIMARY KEY,
            config TEXT NOT NULL,
            state TEXT NOT NULL,
            updated_us INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        9,
        "ml: when the data that started a decision was committed",
        """
        -- The reading's (own trigger) or the MQTT request's batch; NULL for the timer's and an
        -- operator's decisions, and for decisions recorded before this migration.
        ALTER TABLE ml_decisions ADD COLUMN committed_us INTEGER;
        """,
    ),
    ROLLUP_PENDING_MIGRATION,
]
