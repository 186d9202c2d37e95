"""What `fieldhub migrate` copies: every table of the schema with its columns, and the check that
a schema holds exactly those (a column added by a later migration is never left behind)."""

from __future__ import annotations

from dataclasses import dataclass

from fieldhub.store.types import StoreError


@dataclass(frozen=True, slots=True)
class Table:
    """One table copied as is: the same name and columns in both schemas."""

    name: str
    columns: tuple[str, ...]
    order_by: str
    # The id column whose sequence must continue after the copied ids (BIGSERIAL/SERIAL).
    serial: str | None = None


# In dependency order (devices and metrics before what refers to them). JSON columns (attributes,
# params, result, rule documents and states, details, the ML loop's inputs, verdicts, guard
# configurations and states) are TEXT in SQLite and JSONB in PostgreSQL: asyncpg's default jsonb
# codec takes the JSON text as is and PostgreSQL parses it, so no Python round trip.
TABLES: tuple[Table, ...] = (
    Table("metrics", ("id", "name"), "id", serial="id"),
    Table(
        "devices",
        (
            "id",
            "uid",
            "profile",
            "first_seen_us",
            "last_seen_us",
            "presence",
            "presence_changed_us",
            "stale_after_s",
            "attributes",
            "command_format",
            "topic_id",
        ),
        "id",
        serial="id",
    ),
    Table("device_metrics", ("device_id", "metric_id"), "device_id, metric_id"),
    Table(
        "readings",
        ("device_id", "metric_id", "ts", "value", "received_at"),
        "device_id, metric_id, ts",
    ),
    Table("presence_events", ("device_id", "ts", "state"), "device_id, ts"),
    Table(
        "dead_letters",
        (
            "id",
            "received_at",
            "topic",
            "reason",
            "detail",
            "payload",
            "size",
            "device_uid",
            "profile",
        ),
        "id",
        serial="id",
    ),
    Table("retained_digests", ("topic", "digest"), "topic"),
    Table(
        "commands",
        (
            "id",
            "device_id",
            "uid",
            "name",
            "params",
            "format",
            "topic",
            "state",
            "created_us",
            "updated_us",
            "timeout_s",
            "expires_us",
            "sent_us",
            "finished_us",
            "result",
            "error",
            "decided_by",
        ),
        "id",
        serial="id",
    ),
    Table("command_history", ("command_id", "seq", "state", "at_us", "detail"), "command_id, seq"),
    *(
        Table(
            name,
            (
                "device_id",
                "metric_id",
                "bucket",
                "n",
                "total",
                "lo",
                "hi",
                "first_ts",
                "first_value",
                "last_ts",
                "last_value",
            ),
            "device_id, metric_id, bucket",
        )
        for name in ("rollup_minute", "rollup_hour")
    ),
    # Security (issue 15): hashes only, copied as they are, so people, tokens and devices sign
    # in to the new database with what they already hold.
    Table(
        "users",
        ("username", "role", "password_hash", "created_us", "updated_us", "disabled"),
        "username",
    ),
    Table(
        "api_tokens",
        (
            "token_id",
            "name",
            "token_hash",
            "role",
            "created_by",
            "created_us",
            "expires_us",
            "last_used_us",
            "revoked_us",
        ),
        "token_id",
    ),
    Table(
        "audit_log",
        ("seq", "at_us", "actor", "action", "target", "address", "outcome", "detail"),
        "seq",
        serial="seq",
    ),
    Table(
        "device_credentials",
        ("device_uid", "password_hash", "created_us", "rotated_us", "revoked_us"),
        "device_uid",
    ),
    # Rules and alarms (issue 16): every table, evaluation states included, so a `for` window
    # pending before the move resumes after it; the event and log seqs continue past the
    # copied ones (and past SQLite's deleted ones).
    Table("rules", ("rule_id", "version", "deleted_us"), "rule_id"),
    Table(
        "rule_versions",
        ("rule_id", "version", "document", "enabled", "author", "created_us"),
        "rule_id, version",
    ),
    Table("rule_state", ("rule_id", "device_uid", "state", "updated_us"), "rule_id, device_uid"),
    Table(
        "alarms",
        (
            "alarm_id",
            "rule_id",
            "device_uid",
            "severity",
            "state",
            "raised_us",
            "acked_us",
            "acked_by",
            "ack_comment",
            "cleared_us",
            "cleared_by",
            "last_notified_us",
            "notifications",
            "escalated_us",
        ),
        "alarm_id",
    ),
    Table(
        "alarm_events",
        ("seq", "alarm_id", "at_us", "state", "actor", "comment"),
        "seq",
        serial="seq",
    ),
    Table(
        "notification_log",
        (
            "seq",
            "at_us",
            "rule_id",
            "alarm_id",
            "kind",
            "target",
            "outcome",
            "attempt",
            "detail",
        ),
        "seq",
        serial="seq",
    ),
    # The window-control loop (issue 17): the decisions (their seqs continue past the copied
    # ones) and each device's guard configuration and state, so a running manual override and
    # the last move's time survive the move.
    Table(
        "ml_decisions",
        (
            "seq",
            "decision_id",
            "device_uid",
            "at_us",
            "trigger",
            "reason",
            "inputs",
            "zscores",
            "model_name",
            "model_version",
            "position",
            "confidence",
            "verdicts",
            "outcome",
            "target_position",
            "command_id",
            "latency_us",
            "request",
            "committed_us",
        ),
        "seq",
        serial="seq",
    ),
    Table("ml_devices", ("device_uid", "config", "state", "updated_us"), "device_uid"),
)
# Tables of either schema that are not data to copy. Sessions are browser sign-ins to the
# server being replaced: short-lived, and a move to PostgreSQL is a restart, so people sign in
# again rather than have live cookies carried over. SQLite's rollup_pending holds readings
# that are in `readings` already and not yet in the rollups: a database fieldhub closed has
# none (the source is refused otherwise, migrate_source.py).
NOT_COPIED = {"schema_migrations", "sessions", "rollup_pending"}


def check_known(engine: str, found: dict[str, set[str]]) -> None:
    """StoreError unless a schema's tables and columns are exactly those TABLES copies: a table
    or column added by a later migration must never be left behind silently."""
    expected = {t.name: set(t.columns) for t in TABLES}
    problems = [f"table {name} is not copied" for name in sorted(found.keys() - expected.keys())]
    problems += [f"table {name} is missing" for name in sorted(expected.keys() - found.keys())]
    for name in sorted(found.keys() & expected.keys()):
        problems += [
            f"column {name}.{c} is not copied" for c in sorted(found[name] - expected[name])
        ]
        problems += [f"column {name}.{c} is missing" for c in sorted(expected[name] - found[name])]
    if problems:
        raise StoreError(
            f"the {engine} schema does not match what fieldhub migrate copies "
            f"({'; '.join(problems)}): a fieldhub bug, nothing was written; please report it"
        )
