"""PostgreSQL schema as numbered migrations (the same versioned migrator as SQLite's).

The readings table is partitioned by time (`ts`, epoch microseconds) into months: a query over a
window touches only its months, and retention drops whole partitions instead of deleting rows
(docs/field-notes.md, "SQLite and PostgreSQL": BRIN on `ts` is useless when rows arrive out of time
order; partitions plus a b-tree on (device, metric, ts) are not). Partitions are created ahead by
the store (`ensure_partitions`); a default partition takes whatever falls outside them (years-old
backfill, a clock far in the future) so no write ever fails for want of one.
"""

from __future__ import annotations

from fieldhub.store.rollup_schema import rollup_migration
from fieldhub.store.sqlite_schema import fastapi_uptime_migration

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "devices, metrics, time-partitioned readings, dead letters, presence, retained digests",
        """
        CREATE TABLE devices (
            id BIGSERIAL PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            profile TEXT NOT NULL,
            first_seen_us BIGINT NOT NULL,
            last_seen_us BIGINT NOT NULL,
            presence TEXT NOT NULL DEFAULT 'unknown',
            presence_changed_us BIGINT,
            stale_after_s INTEGER NOT NULL,
            attributes JSONB NOT NULL DEFAULT '{}'
        );
        CREATE TABLE metrics (
            id SERIAL PRIMARY KEY,
            name TEXT NOT NULL UNIQUE
        );
        CREATE TABLE readings (
            device_id BIGINT NOT NULL,
            metric_id INTEGER NOT NULL,
            ts BIGINT NOT NULL,
            value DOUBLE PRECISION NOT NULL,
            received_at BIGINT NOT NULL,
            PRIMARY KEY (device_id, metric_id, ts)
        ) PARTITION BY RANGE (ts);
        CREATE TABLE readings_default PARTITION OF readings DEFAULT;
        CREATE TABLE device_metrics (
            device_id BIGINT NOT NULL,
            metric_id INTEGER NOT NULL,
            PRIMARY KEY (device_id, metric_id)
        );
        CREATE TABLE dead_letters (
            id BIGSERIAL PRIMARY KEY,
            received_at BIGINT NOT NULL,
            topic TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            payload BYTEA NOT NULL,
            size INTEGER NOT NULL,
            device_uid TEXT,
            profile TEXT
        );
        CREATE INDEX dead_letters_reason ON dead_letters (reason, id);
        CREATE INDEX dead_letters_device ON dead_letters (device_uid, id);
        CREATE INDEX dead_letters_received ON dead_letters (received_at);
        CREATE TABLE presence_events (
            device_id BIGINT NOT NULL,
            ts BIGINT NOT NULL,
            state TEXT NOT NULL,
            PRIMARY KEY (device_id, ts)
        );
        CREATE TABLE retained_digests (
            topic TEXT PRIMARY KEY,
            digest BYTEA NOT NULL
        );
        """,
    ),
    (
        2,
        "commands with their history; each device's command format and topic id spelling",
        """
        ALTER TABLE devices ADD COLUMN command_format TEXT;
        ALTER TABLE devices ADD COLUMN topic_id TEXT;
        CREATE TABLE commands (
            id BIGSERIAL PRIMARY KEY,
            device_id BIGINT NOT NULL,
            uid TEXT NOT NULL,
            name TEXT NOT NULL,
            params JSONB NOT NULL,
            format TEXT NOT NULL,
            topic TEXT NOT NULL,
            state TEXT NOT NULL,
            created_us BIGINT NOT NULL,
            updated_us BIGINT NOT NULL,
            timeout_s DOUBLE PRECISION NOT NULL,
            expires_us BIGINT,
            sent_us BIGINT,
            finished_us BIGINT,
            result JSONB,
            error TEXT,
            decided_by TEXT,
            UNIQUE (device_id, uid)
        );
        CREATE INDEX commands_device_created ON commands (device_id, created_us, uid);
        CREATE INDEX commands_active ON commands (state) WHERE state IN ('pending', 'sent');
        CREATE TABLE command_history (
            command_id BIGINT NOT NULL,
            seq INTEGER NOT NULL,
            state TEXT NOT NULL,
            at_us BIGINT NOT NULL,
            detail TEXT NOT NULL,
            PRIMARY KEY (command_id, seq)
        );
        """,
    ),
    (
        3,
        "per-minute and per-hour rollups (count, sum, min, max, first, last) of what is stored",
        rollup_migration(ids="BIGINT", count="BIGINT", real="DOUBLE PRECISION"),
    ),
    (
        4,
        "the FastAPI stack's uptime is milliseconds: its devices' uptime_s becomes uptime_ms",
        # The same statements as SQLite's migration 5 (written once, in sqlite_schema.py).
        fastapi_uptime_migration(),
    ),
    (
        5,
        "security: users, sessions, API tokens, the audit log, device credentials",
        # SQLite's migration 6 with PostgreSQL's types (the comments there say why).
        """
        CREATE TABLE users (
            username TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_us BIGINT NOT NULL,
            updated_us BIGINT NOT NULL,
            disabled SMALLINT NOT NULL DEFAULT 0
        );
        CREATE TABLE sessions (
            token_hash TEXT PRIMARY KEY,
            username TEXT NOT NULL,
            csrf_token TEXT NOT NULL,
            created_us BIGINT NOT NULL,
            last_seen_us BIGINT NOT NULL,
            expires_us BIGINT NOT NULL,
            address TEXT
        );
        CREATE INDEX sessions_username ON sessions (username);
        CREATE TABLE api_tokens (
            token_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            token_hash TEXT NOT NULL,
            role TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_us BIGINT NOT NULL,
            expires_us BIGINT,
            last_used_us BIGINT,
            revoked_us BIGINT
        );
        CREATE TABLE audit_log (
            seq BIGSERIAL PRIMARY KEY,
            at_us BIGINT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            address TEXT,
            outcome TEXT NOT NULL,
            detail JSONB NOT NULL
        );
        CREATE INDEX audit_log_at ON audit_log (at_us);
        CREATE INDEX audit_log_actor ON audit_log (actor, seq);
        CREATE TABLE device_credentials (
            device_uid TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            created_us BIGINT NOT NULL,
            rotated_us BIGINT NOT NULL,
            revoked_us BIGINT
        );
        """,
    ),
    (
        6,
        "rules and alarms: rule versions, evaluation state, alarms and their events, notifications",
        # SQLite's migration 7 with PostgreSQL's types (the comments there say why).
        """
        CREATE TABLE rules (
            rule_id TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            deleted_us BIGINT
        );
        CREATE TABLE rule_versions (
            rule_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            document JSONB NOT NULL,
            enabled SMALLINT NOT NULL,
            author TEXT NOT NULL,
            created_us BIGINT NOT NULL,
            PRIMARY KEY (rule_id, version)
        );
        CREATE TABLE rule_state (
            rule_id TEXT NOT NULL,
            device_uid TEXT NOT NULL,
            state JSONB NOT NULL,
            updated_us BIGINT NOT NULL,
            PRIMARY KEY (rule_id, device_uid)
        );
        CREATE TABLE alarms (
            alarm_id TEXT PRIMARY KEY,
            rule_id TEXT NOT NULL,
            device_uid TEXT NOT NULL,
            severity TEXT NOT NULL,
            state TEXT NOT NULL,
            raised_us BIGINT NOT NULL,
            acked_us BIGINT,
            acked_by TEXT,
            ack_comment TEXT,
            cleared_us BIGINT,
            cleared_by TEXT,
            last_notified_us BIGINT,
            notifications INTEGER NOT NULL DEFAULT 0,
            escalated_us BIGINT
        );
        CREATE UNIQUE INDEX alarms_open ON alarms (rule_id, device_uid) WHERE state <> 'cleared';
        CREATE INDEX alarms_raised ON alarms (raised_us, alarm_id COLLATE "C");
        CREATE INDEX alarms_device ON alarms (device_uid, raised_us);
        CREATE INDEX alarms_rule ON alarms (rule_id, raised_us);
        CREATE TABLE alarm_events (
            seq BIGSERIAL PRIMARY KEY,
            alarm_id TEXT NOT NULL,
            at_us BIGINT NOT NULL,
            state TEXT NOT NULL,
            actor TEXT NOT NULL,
            comment TEXT
        );
        CREATE INDEX alarm_events_alarm ON alarm_events (alarm_id, seq);
        CREATE TABLE notification_log (
            seq BIGSERIAL PRIMARY KEY,
            at_us BIGINT NOT NULL,
            rule_id TEXT NOT NULL,
            alarm_id TEXT,
            kind TEXT NOT NULL,
            target TEXT NOT NULL,
            outcome TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            detail JSONB NOT NULL
        );
        CREATE INDEX notification_log_at ON notification_log (at_us);
        CREATE INDEX notification_log_rule ON notification_log (rule_id, seq);
        CREATE INDEX notification_log_alarm ON notification_log (alarm_id, seq);
        """,
    ),
    (
        7,
        "ml: the window loop's decisions, and its guard configuration and state per device",
        # SQLite's migration 8 with PostgreSQL's types (the comments there say why).
        """
        CREATE TABLE ml_decisions (
            seq BIGSERIAL PRIMARY KEY,
            decision_id TEXT NOT NULL UNIQUE,
            device_uid TEXT NOT NULL,
            at_us BIGINT NOT NULL,
            trigger TEXT NOT NULL,
            reason TEXT NOT NULL,
            inputs JSONB NOT NULL,
            zscores JSONB,
            model_name TEXT,
            model_version INTEGER,
            position DOUBLE PRECISION,
            confidence DOUBLE PRECISION,
            verdicts JSONB NOT NULL,
            outcome TEXT NOT NULL,
            target_position INTEGER,
            command_id TEXT,
            latency_us BIGINT,
            request JSONB
        );
        CREATE INDEX ml_decisions_device ON ml_decisions (device_uid, seq);
        CREATE INDEX ml_decisions_at ON ml_decisions (at_us);
        CREATE TABLE ml_devices (
            device_uid TEXT PRIMARY KEY,
            config JSONB NOT NULL,
            state JSONB NOT NULL,
            updated_us BIGINT NOT NULL
        );
        """,
    ),
    (
        8,
        "ml: when the data that started a decision was committed",
        """
        ALTER TABLE ml_decisions ADD COLUMN committed_us BIGINT;
        """,
    ),
]
