"""One store core for every SQL engine: `Store` implemented once, as scripts (ops.py) that an
engine runs.

An engine subclass says how it connects and how it runs a script: `_read` (on a reader, no
transaction needed) and `_write` (in one transaction, on the writer). Everything a store does
with rows (the batch plan, device filters, series parts, commands, retention sweeps,
migrations) is written here and in the modules it calls, once. A new table is one schema entry
per engine (`sqlite_schema.py`, `postgres_schema.py`) and its scripts here.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Literal, TypeVar

from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.messages import Decoded
from fieldhub.store import (
    command_rows,
    dead_letter_rows,
    ml_rows,
    reads,
    rule_rows,
    security_rows,
    writes,
)
from fieldhub.store.admission import Admission, admit
from fieldhub.store.base import Store
from fieldhub.store.dialect import Dialect, Params
from fieldhub.store.ops import Query, Row, Script
from fieldhub.store.plan import WriterCaches
from fieldhub.store.retention import delete_series_before, series_sql
from fieldhub.store.rollups import Part, Partial
from fieldhub.store.types import (
    Aggregate,
    AlarmEventRow,
    AlarmRow,
    AlarmState,
    ApiTokenRow,
    AuditEntry,
    AuditRow,
    CommandOutcome,
    CommandRow,
    DeadLetterRow,
    DeviceCredentialRow,
    DeviceRow,
    MetricSummary,
    MlDecisionRow,
    MlDecisionStats,
    MlDeviceRow,
    NotificationEntry,
    NotificationRow,
    PresenceEvent,
    PresenceState,
    ReadingRow,
    RuleStateRow,
    RuleVersionRow,
    Selector,
    SessionRow,
    StoreError,
    Tier,
    TimeRow,
    UserRow,
    WriteBatch,
    WriteResult,
)

T = TypeVar("T")


class SqlStore(Store):
    """`Store` over an engine that runs scripts (see the module docstring)."""

    dialect: Dialect

    def __init__(self, *, stale_after_s: Mapping[str, int]) -> None:
        self._stale_after_s = dict(stale_after_s)
        self._caches = WriterCaches()

    # -- what an engine provides ---------------------------------------------------------------

    @abc.abstractmethod
    async def _read(self, script: Script[T]) -> T:
        """Run a read-only script."""

    @abc.abstractmethod
    async def _write(self, script: Script[T]) -> T:
        """Run a script in one transaction on the writer: all of it commits, or none."""

    async def _read_series(self, script: Script[T]) -> T:
        """Run one part of a series query (an engine may bound how many run at once)."""
        return await self._read(script)

    async def _drop_before(self, tier: Tier, cutoff_us: int) -> int:
        """Engine-level retention before the DELETE of the tier's default rule (PostgreSQL
        drops whole partitions); returns the rows it removed."""
        return 0

    # -- lifecycle helpers engines call --------------------------------------------------------

    async def _migrate(self, migrations: Sequence[writes.Migration], where: str) -> None:
        while await self._write(writes.migrate_step(self.dialect, migrations, where)) is not None:
            pass

    async def _load_caches(self) -> None:
        self._caches = await self._read(writes.load_caches())

    # -- writes --------------------------------------------------------------------------------

    def admit(self, decoded: Sequence[Decoded], new_device_budget: float) -> Admission:
        """See `Store.admit`."""
        return admit(decoded, self._caches, self.input_limits, new_device_budget)

    async def fold_rollups(self) -> int:
        """Add the pending readings to the rollups (see `Store.fold_rollups`)."""
        if self.dialect.pending_rollups is None:
            return 0
        return await self._write(writes.fold_rollups(self.dialect))

    async def write_batch(self, batch: WriteBatch) -> WriteResult:
        """Store a batch in one transaction (see `Store.write_batch`)."""
        try:
            result, delta = await self._write(
                writes.write_batch(
                    self.dialect,
                    batch,
                    self._caches,
                    self._stale_after_s,
                    self.input_limits.max_attributes_per_device,
                )
            )
        except StoreError as exc:
            # The same kind: whether it is about the data or the database decides what ingest
            # does with the batch (StoreUnavailable: retry it whole, never a dead letter).
            raise type(exc)(f"writing a batch of {len(batch)} messages failed: {exc}") from exc
        # The caches follow only what committed.
        self._caches.apply(delta)
        return result

    async def retained_digests(self) -> dict[str, bytes]:
        """Topic -> digest of the last stored payload on retained-publishing topics."""
        return await self._read(reads.retained_digests())

    # -- devices -------------------------------------------------------------------------------

    async def list_devices(
        self,
        *,
        profile: str | None,
        presence: PresenceState | None,
        search: str | None,
        limit: int,
        after: str | None,
        now_us: int,
    ) -> list[DeviceRow]:
        """Devices ordered by id (see `Store.list_devices`)."""
        return await self._read(
            reads.list_devices(
                self.dialect,
                profile=profile,
                presence=presence,
                search=search,
                limit=limit,
                after=after,
                now_us=now_us,
            )
        )

    async def count_devices(
        self,
        *,
        profile: str | None,
        presence: PresenceState | None,
        search: str | None,
        now_us: int,
    ) -> int:
        """How many devices match (see `Store.count_devices`)."""
        return await self._read(
            reads.count_devices(
                self.dialect, profile=profile, presence=presence, search=search, now_us=now_us
            )
        )

    async def get_device(self, device_id: str, *, now_us: int) -> DeviceRow | None:
        """One device by canonical id."""
        return await self._read(reads.get_device(self.dialect, device_id, now_us))

    async def device_metrics(self, device_id: str) -> list[MetricSummary]:
        """Metrics of a device with their latest values, by name."""
        return (await self.latest_values([device_id]))[device_id]

    async def latest_values(self, device_ids: Sequence[str]) -> dict[str, list[MetricSummary]]:
        """Latest value of every metric of several devices, in one query."""
        return await self._read(reads.latest_values(self.dialect, list(device_ids)))

    async def presence_history(
        self, device_id: str, *, start_us: int, end_us: int, limit: int
    ) -> list[PresenceEvent]:
        """Presence changes in the window, with the state it opens in (see the interface)."""
        return await self._read(
            reads.presence_history(
                self.dialect, device_id, start_us=start_us, end_us=end_us, limit=limit
            )
        )

    # -- readings ------------------------------------------------------------------------------

    async def query_readings(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start_us: int | None,
        end_us: int | None,
        limit: int,
        after: tuple[str, int] | None,
        descending: bool,
    ) -> list[ReadingRow]:
        """Raw readings ordered by metric name, then time (see `Store.query_readings`)."""
        return await self._read(
            reads.query_readings(
                self.dialect,
                device_id,
                metrics=metrics,
                start_us=start_us,
                end_us=end_us,
                limit=limit,
                after=after,
                descending=descending,
            )
        )

    async def series_partials(
        self,
        device_ids: Sequence[str] | None,
        metric: str,
        part: Part,
        interval_us: int,
        *,
        agg: Aggregate,
    ) -> list[tuple[int, Partial]]:
        """One part of a series query over a set of devices, from raw readings or a rollup."""
        return await self._read_series(
            reads.series_partials(self.dialect, device_ids, metric, part, interval_us, agg=agg)
        )

    async def query_time_rows(
        self,
        device_id: str,
        metric: str,
        *,
        with_metrics: Sequence[str],
        start_us: int | None,
        end_us: int | None,
        limit: int,
        before_us: int | None,
    ) -> list[TimeRow]:
        """Rows of `metric` newest first, other metrics joined at the same time."""
        return await self._read(
            reads.query_time_rows(
                self.dialect,
                device_id,
                metric,
                with_metrics=with_metrics,
                start_us=start_us,
                end_us=end_us,
                limit=limit,
                before_us=before_us,
            )
        )

    # -- dead letters --------------------------------------------------------------------------

    async def list_dead_letters(
        self,
        *,
        limit: int,
        before_id: int | None,
        reason: str | None,
        device_id: str | None,
    ) -> list[DeadLetterRow]:
        """Dead letters, newest first."""
        return await self._read(
            reads.list_dead_letters(
                self.dialect, limit=limit, before_id=before_id, reason=reason, device_id=device_id
            )
        )

    async def count_dead_letters(self, *, since_us: int) -> int:
        """Dead letters received since `since_us`."""
        return await self._read(reads.count_dead_letters(self.dialect, since_us))

    # -- commands ------------------------------------------------------------------------------

    async def insert_command(self, command: CommandRow, detail: str) -> CommandRow | None:
        """Store a new pending command (see `Store.insert_command`)."""
        return await self._write(command_rows.insert(self.dialect, command, detail))

    async def transition_command(
        self,
        device_id: str,
        command_id: str,
        target: CommandState,
        at_us: int,
        outcome: CommandOutcome,
    ) -> CommandRow | None:
        """Move a command on if the transition table allows it (see `Store.transition_command`)."""
        return await self._write(
            command_rows.transition_by_uid(
                self.dialect, device_id, command_id, target, at_us, outcome
            )
        )

    async def get_command(self, device_id: str, command_id: str) -> CommandRow | None:
        """One command with its history."""
        return await self._read(command_rows.get(self.dialect, device_id, command_id))

    async def list_commands(
        self,
        device_id: str,
        *,
        state: CommandState | None,
        limit: int,
        before: tuple[int, str] | None,
    ) -> list[CommandRow]:
        """A device's commands, newest first."""
        return await self._read(command_rows.page(self.dialect, device_id, state, limit, before))

    async def active_commands(self) -> list[CommandRow]:
        """Commands not yet final, oldest first."""
        return await self._read(command_rows.active(self.dialect))

    # -- security (see the interface; scripts in security_rows.py) -----------------------------

    async def put_user(self, user: UserRow) -> None:
        """Insert or replace a user."""
        await self._write(security_rows.put_user(self.dialect, user))

    async def get_user(self, username: str) -> UserRow | None:
        """One user by name."""
        return await self._read(security_rows.get_user(self.dialect, username))

    async def list_users(self) -> list[UserRow]:
        """Every user by name."""
        return await self._read(security_rows.list_users(self.dialect))

    async def count_users(self) -> int:
        """How many users exist."""
        return await self._read(security_rows.count_users())

    async def delete_user(self, username: str) -> bool:
        """Delete a user and their sessions."""
        return await self._write(security_rows.delete_user(self.dialect, username))

    async def insert_session(self, session: SessionRow) -> None:
        """Store a new session."""
        await self._write(security_rows.insert_session(self.dialect, session))

    async def get_session(self, token_hash: str) -> SessionRow | None:
        """One session by its token hash."""
        return await self._read(security_rows.get_session(self.dialect, token_hash))

    async def touch_session(self, token_hash: str, last_seen_us: int) -> None:
        """Record activity on a session."""
        await self._write(security_rows.touch_session(self.dialect, token_hash, last_seen_us))

    async def delete_session(self, token_hash: str) -> None:
        """End one session."""
        await self._write(security_rows.delete_session(self.dialect, token_hash))

    async def delete_user_sessions(self, username: str) -> int:
        """End every session of a user."""
        return await self._write(security_rows.delete_user_sessions(self.dialect, username))

    async def delete_expired_sessions(self, now_us: int, idle_before_us: int) -> int:
        """Delete expired and idle sessions."""
        return await self._write(
            security_rows.delete_expired_sessions(self.dialect, now_us, idle_before_us)
        )

    async def insert_api_token(self, token: ApiTokenRow) -> None:
        """Store a new API token."""
        await self._write(security_rows.insert_api_token(self.dialect, token))

    async def get_api_token(self, token_id: str) -> ApiTokenRow | None:
        """One API token by id."""
        return await self._read(security_rows.get_api_token(self.dialect, token_id))

    async def list_api_tokens(self) -> list[ApiTokenRow]:
        """Every API token, oldest first."""
        return await self._read(security_rows.list_api_tokens(self.dialect))

    async def revoke_api_token(self, token_id: str, at_us: int) -> bool:
        """Revoke an API token once."""
        return await self._write(security_rows.revoke_api_token(self.dialect, token_id, at_us))

    async def touch_api_token(self, token_id: str, last_used_us: int) -> None:
        """Record a use of an API token."""
        await self._write(security_rows.touch_api_token(self.dialect, token_id, last_used_us))

    async def append_audit(self, entry: AuditEntry) -> int:
        """Append to the audit log."""
        return await self._write(security_rows.append_audit(self.dialect, entry))

    async def list_audit(
        self,
        *,
        limit: int,
        before_seq: int | None = None,
        actor: str | None = None,
        action: str | None = None,
    ) -> list[AuditRow]:
        """Audit entries newest first."""
        return await self._read(
            security_rows.list_audit(
                self.dialect, limit=limit, before_seq=before_seq, actor=actor, action=action
            )
        )

    async def put_device_credential(self, credential: DeviceCredentialRow) -> None:
        """Insert or replace a device credential (active afterwards)."""
        await self._write(security_rows.put_device_credential(self.dialect, credential))

    async def get_device_credential(self, device_id: str) -> DeviceCredentialRow | None:
        """One device credential."""
        return await self._read(security_rows.get_device_credential(self.dialect, device_id))

    async def list_device_credentials(self) -> list[DeviceCredentialRow]:
        """Every device credential by device id."""
        return await self._read(security_rows.list_device_credentials(self.dialect))

    async def revoke_device_credential(self, device_id: str, at_us: int) -> bool:
        """Revoke a device credential once."""
        return await self._write(
            security_rows.revoke_device_credential(self.dialect, device_id, at_us)
        )

    # -- rules and alarms (see the interface; scripts in rule_rows.py) -------------------------

    async def put_rule_version(self, rule: RuleVersionRow) -> int:
        """Store a rule's next version; returns its number."""
        return await self._write(rule_rows.put_rule_version(self.dialect, rule))

    async def get_rule(self, rule_id: str, version: int | None = None) -> RuleVersionRow | None:
        """A rule's current (or given) version."""
        return await self._read(rule_rows.get_rule(self.dialect, rule_id, version))

    async def list_rules(self, include_deleted: bool = False) -> list[RuleVersionRow]:
        """Every rule's current version by id."""
        return await self._read(rule_rows.list_rules(self.dialect, include_deleted))

    async def rule_history(self, rule_id: str) -> list[RuleVersionRow]:
        """A rule's versions, oldest first."""
        return await self._read(rule_rows.rule_history(self.dialect, rule_id))

    async def delete_rule(self, rule_id: str, at_us: int) -> bool:
        """Mark a rule deleted once."""
        return await self._write(rule_rows.delete_rule(self.dialect, rule_id, at_us))

    async def put_rule_states(self, states: Sequence[RuleStateRow]) -> None:
        """Upsert evaluation states in one transaction."""
        if states:
            await self._write(rule_rows.put_rule_states(self.dialect, states))

    async def load_rule_states(self, rule_id: str | None = None) -> list[RuleStateRow]:
        """Stored evaluation states."""
        return await self._read(rule_rows.load_rule_states(self.dialect, rule_id))

    async def delete_rule_states(self, rule_id: str) -> int:
        """Delete a rule's evaluation states."""
        return await self._write(rule_rows.delete_rule_states(self.dialect, rule_id))

    async def open_alarm(self, alarm: AlarmRow) -> AlarmRow | None:
        """Raise an alarm unless its (rule, device) has an open one."""
        return await self._write(rule_rows.open_alarm(self.dialect, alarm))

    async def transition_alarm(
        self,
        alarm_id: str,
        state: AlarmState,
        at_us: int,
        actor: str,
        comment: str | None = None,
    ) -> AlarmRow | None:
        """Move an alarm on if the transition table allows it."""
        return await self._write(
            rule_rows.transition_alarm(self.dialect, alarm_id, state, at_us, actor, comment)
        )

    async def record_alarm_changes(self, changes: Sequence[AlarmRow]) -> list[AlarmRow | None]:
        """Raises and clears in one transaction."""
        if not changes:
            return []
        return await self._write(rule_rows.record_alarm_changes(self.dialect, changes))

    async def get_alarm(self, alarm_id: str) -> AlarmRow | None:
        """One alarm."""
        return await self._read(rule_rows.get_alarm(self.dialect, alarm_id))

    async def list_alarms(
        self,
        *,
        state: AlarmState | Literal["open"] | None = None,
        device: str | None = None,
        rule_id: str | None = None,
        limit: int,
        before: tuple[int, str] | None = None,
    ) -> list[AlarmRow]:
        """Alarms newest first, filtered."""
        return await self._read(
            rule_rows.list_alarms(
                self.dialect,
                state=state,
                device=device,
                rule_id=rule_id,
                limit=limit,
                before=before,
            )
        )

    async def alarm_events(self, alarm_id: str) -> list[AlarmEventRow]:
        """An alarm's events, oldest first."""
        return await self._read(rule_rows.alarm_events(self.dialect, alarm_id))

    async def mark_notified(
        self, alarm_id: str, at_us: int, escalated: bool = False
    ) -> AlarmRow | None:
        """Count a notification sent about an alarm."""
        return await self._write(rule_rows.mark_notified(self.dialect, alarm_id, at_us, escalated))

    async def append_notification_log(self, entry: NotificationEntry) -> int:
        """Append to the notification log."""
        return await self._write(rule_rows.append_notification_log(self.dialect, entry))

    async def append_notification_logs(self, entries: Sequence[NotificationEntry]) -> list[int]:
        """Append several entries in one transaction."""
        if not entries:
            return []
        return await self._write(rule_rows.append_notification_logs(self.dialect, entries))

    async def list_notification_log(
        self,
        *,
        limit: int,
        before_seq: int | None = None,
        rule_id: str | None = None,
        alarm_id: str | None = None,
    ) -> list[NotificationRow]:
        """Notification log entries newest first."""
        return await self._read(
            rule_rows.list_notification_log(
                self.dialect, limit=limit, before_seq=before_seq, rule_id=rule_id, alarm_id=alarm_id
            )
        )

    # -- the window-control ML loop (see the interface; scripts in ml_rows.py) -----------------

    async def append_ml_decision(self, decision: MlDecisionRow) -> int:
        """Record a decision; returns its seq."""
        return await self._write(ml_rows.append_ml_decision(self.dialect, decision))

    async def append_ml_decisions(self, decisions: Sequence[MlDecisionRow]) -> list[int]:
        """Record several decisions in one transaction."""
        if not decisions:
            return []
        return await self._write(ml_rows.append_ml_decisions(self.dialect, decisions))

    async def list_ml_decisions(
        self,
        *,
        device: str | None = None,
        limit: int,
        before_seq: int | None = None,
        outcome: str | None = None,
    ) -> list[MlDecisionRow]:
        """Decisions newest first, filtered."""
        return await self._read(
            ml_rows.list_ml_decisions(
                self.dialect, device=device, limit=limit, before_seq=before_seq, outcome=outcome
            )
        )

    async def get_ml_decision(self, decision_id: str) -> MlDecisionRow | None:
        """One decision."""
        return await self._read(ml_rows.get_ml_decision(self.dialect, decision_id))

    async def ml_decision_stats(
        self, *, since_us: int, device: str | None = None
    ) -> MlDecisionStats:
        """Outcome counts, confidence histogram and latency percentiles since a time."""
        return await self._read(
            ml_rows.ml_decision_stats(self.dialect, since_us=since_us, device=device)
        )

    async def delete_ml_decisions_before(self, cutoff_us: int) -> int:
        """Delete decisions older than a time."""
        return await self._write(ml_rows.delete_ml_decisions_before(self.dialect, cutoff_us))

    async def put_ml_device(self, device: MlDeviceRow) -> None:
        """Upsert a device's guard configuration and state."""
        await self._write(ml_rows.put_ml_device(self.dialect, device))

    async def get_ml_device(self, device_id: str) -> MlDeviceRow | None:
        """A device's guard configuration and state."""
        return await self._read(ml_rows.get_ml_device(self.dialect, device_id))

    async def list_ml_devices(self) -> list[MlDeviceRow]:
        """Every device's guard configuration and state."""
        return await self._read(ml_rows.list_ml_devices(self.dialect))

    # -- retention -----------------------------------------------------------------------------

    async def dead_letter_bytes(self) -> int:
        """The dead letters' size as their budget counts it."""
        return await self._read(dead_letter_rows.dead_letter_bytes(self.dialect))

    async def delete_dead_letters_before(
        self, cutoff_us: int, *, reasons: Sequence[str] = (), except_reasons: Sequence[str] = ()
    ) -> int:
        """Dead letters older than a time, of some reasons (see the Store method)."""
        return await self._write(
            dead_letter_rows.delete_dead_letters_before(
                self.dialect, cutoff_us, reasons=reasons, except_reasons=except_reasons
            )
        )

    async def prune_dead_letters(self, max_bytes: int) -> int:
        """The oldest dead letters past a byte budget."""
        return await self._write(dead_letter_rows.prune_dead_letters(self.dialect, max_bytes))

    async def delete_older(
        self,
        tier: Tier,
        cutoff_us: int,
        *,
        selector: Selector,
        keep: Sequence[Selector],
    ) -> int:
        """One retention sweep (see `Store.delete_older`)."""
        deleted = 0
        if selector == Selector() and not keep:
            deleted = await self._drop_before(tier, cutoff_us)
        p = Params(self.dialect)
        sql = series_sql(selector, keep, p)
        series = [(int(row[0]), int(row[1])) for row in await self._read(_rows(sql, p.values))]
        at = 0
        while at < len(series):
            started = time.perf_counter()
            count, at = await self._write(
                delete_series_before(self.dialect.mark, tier, cutoff_us, series, at)
            )
            deleted += count
            # As long again for everyone else: a sweep takes at most half of the writer.
            await asyncio.sleep(time.perf_counter() - started)
        return deleted

    async def ping(self) -> None:
        """A trivial query on a reader."""
        await self._read(_ping())


def _rows(sql: str, args: Sequence[object]) -> Script[list[Row]]:
    return (yield Query(sql, args))


def _ping() -> Script[None]:
    yield Query("SELECT 1")
