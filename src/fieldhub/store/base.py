"""The storage interface: what ingest, the API, commands and retention ask of a database.

`core.SqlStore` implements it once for every SQL engine; `sqlite.py` and `postgres.py` add only
how they connect and run statements. The rows it speaks are in `types.py`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import Literal

from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.messages import Decoded
from fieldhub.store.admission import Admission, InputLimits
from fieldhub.store.rollups import Part, Partial, combine, plan_series
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
    SeriesPoint,
    SessionRow,
    Tier,
    TimeRow,
    UserRow,
    WriteBatch,
    WriteResult,
)


class Store(abc.ABC):
    """The storage interface. Every method may be called from any task of the event loop; writes
    are serialised by the engine (SQLite's one writer thread, PostgreSQL's transactions), and
    several processes may write one PostgreSQL database at once (ingest workers)."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; pending writes are finished first."""

    # The bounds on what devices may create (admission.py); the platform sets them from the
    # settings before the first write.
    input_limits: InputLimits = InputLimits()

    @abc.abstractmethod
    def admit(self, decoded: Sequence[Decoded], new_device_budget: float) -> Admission:
        """Which of `decoded` the next write may take under `input_limits`: no I/O, judged on
        what the writer knows (admission.py). Cuts long attribute values in place."""

    @abc.abstractmethod
    async def write_batch(self, batch: WriteBatch) -> WriteResult:
        """Store a batch in one transaction. Readings already stored (same device, metric and
        time) are counted as duplicates and left as they were; attribute keys past
        `input_limits.max_attributes_per_device` are not stored (counted in the result)."""

    @abc.abstractmethod
    async def retained_digests(self) -> dict[str, bytes]:
        """Topic -> digest of the last retained-topic payload stored (loaded at ingest start)."""

    @abc.abstractmethod
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
        """Devices ordered by id, after the cursor id, filtered."""

    @abc.abstractmethod
    async def count_devices(
        self,
        *,
        profile: str | None,
        presence: PresenceState | None,
        search: str | None,
        now_us: int,
    ) -> int:
        """How many devices match the filters."""

    @abc.abstractmethod
    async def get_device(self, device_id: str, *, now_us: int) -> DeviceRow | None:
        """One device by canonical id."""

    @abc.abstractmethod
    async def device_metrics(self, device_id: str) -> list[MetricSummary]:
        """The metrics a device has reported, with their latest values."""

    async def latest_values(self, device_ids: Sequence[str]) -> dict[str, list[MetricSummary]]:
        """`device_metrics` for several devices at once (the fleet page's rows)."""
        return {device_id: await self.device_metrics(device_id) for device_id in device_ids}

    @abc.abstractmethod
    async def presence_history(
        self, device_id: str, *, start_us: int, end_us: int, limit: int
    ) -> list[PresenceEvent]:
        """The newest `limit` presence changes in [start, end), oldest first, preceded by the
        last change before `start` (the state the window opens in) when there is one and the
        window's changes were not truncated."""

    @abc.abstractmethod
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
        """Raw readings ordered by metric then time; `after` is the (metric, ts) cursor."""

    async def query_series(
        self,
        device_id: str,
        metric: str,
        *,
        start_us: int,
        end_us: int,
        interval_us: int,
        agg: Aggregate,
    ) -> list[SeriesPoint]:
        """Readings aggregated into buckets aligned to multiples of the interval since the epoch.

        Read from the hour or minute rollups where the interval allows, raw readings only for
        the edges the rollups do not cover (store/rollups.py).
        """
        return await self._aggregate_series(
            [device_id], metric, start_us=start_us, end_us=end_us, interval_us=interval_us, agg=agg
        )

    async def query_fleet_series(
        self,
        metric: str,
        *,
        device_ids: Sequence[str] | None,
        start_us: int,
        end_us: int,
        interval_us: int,
        agg: Aggregate,
    ) -> list[SeriesPoint]:
        """One metric aggregated per bucket across several devices (every device that reported
        it when `device_ids` is None), read as `query_series` reads one device's.

        Each bucket aggregates all the devices' readings in it as if they were one series: avg
        is their sum over their count (a device reporting twice as often weighs twice as much),
        min/max/sum/count are over every reading. first (last) is the value of the earliest
        (latest) reading in the bucket; when several devices have a reading at that very time,
        the one of the device whose id sorts first (bytewise). Unknown ids add nothing.
        """
        if device_ids is not None and not device_ids:
            return []
        return await self._aggregate_series(
            device_ids,
            metric,
            start_us=start_us,
            end_us=end_us,
            interval_us=interval_us,
            agg=agg,
        )

    async def _aggregate_series(
        self,
        device_ids: Sequence[str] | None,
        metric: str,
        *,
        start_us: int,
        end_us: int,
        interval_us: int,
        agg: Aggregate,
    ) -> list[SeriesPoint]:
        # The parts (up to five: raw and minute edges, hours between) are independent queries:
        # run together, they overlap on the engine's side (SQLite's reader threads release the
        # GIL inside a query; PostgreSQL runs each on its own backend), and a fleet-wide series,
        # whose every part reads thousands of rows, answers in about the time of its largest.
        parts = await asyncio.gather(
            *(
                self.series_partials(device_ids, metric, part, interval_us, agg=agg)
                for part in plan_series(start_us, end_us, interval_us)
            )
        )
        return combine(parts, agg)

    @abc.abstractmethod
    async def series_partials(
        self,
        device_ids: Sequence[str] | None,
        metric: str,
        part: Part,
        interval_us: int,
        *,
        agg: Aggregate,
    ) -> list[tuple[int, Partial]]:
        """One part of a series query over a set of devices (None: every device with the
        metric): (bucket, partial aggregate) rows, buckets ascending, holding what `agg`
        needs (rollups.partials_sql)."""

    @abc.abstractmethod
    async def list_dead_letters(
        self,
        *,
        limit: int,
        before_id: int | None,
        reason: str | None,
        device_id: str | None,
    ) -> list[DeadLetterRow]:
        """Dead letters, newest first."""

    @abc.abstractmethod
    async def count_dead_letters(self, *, since_us: int) -> int:
        """Dead letters received at or after `since_us`."""

    @abc.abstractmethod
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
        """One row per reading of `metric` in [start, end), newest first, each with the values
        of `with_metrics` stored at the same time; `before_us` is the cursor (the previous
        page's last time)."""

    # -- commands (docs/commands.md) ---------------------------------------------------------------

    @abc.abstractmethod
    async def insert_command(self, command: CommandRow, detail: str) -> CommandRow | None:
        """Store a new `pending` command with its first history entry; None (and nothing stored)
        when the device already has a command with that id."""

    @abc.abstractmethod
    async def transition_command(
        self,
        device_id: str,
        command_id: str,
        target: CommandState,
        at_us: int,
        outcome: CommandOutcome,
    ) -> CommandRow | None:
        """Move a command to `target` if its stored state may precede it (states.sources);
        returns the row as it now is with the new history entry, or None when it could not."""

    @abc.abstractmethod
    async def get_command(self, device_id: str, command_id: str) -> CommandRow | None:
        """One command with its whole history."""

    @abc.abstractmethod
    async def list_commands(
        self,
        device_id: str,
        *,
        state: CommandState | None,
        limit: int,
        before: tuple[int, str] | None,
    ) -> list[CommandRow]:
        """A device's commands, newest first (by creation time, then id), without history;
        `before` is the (created_us, command_id) cursor."""

    @abc.abstractmethod
    async def active_commands(self) -> list[CommandRow]:
        """Every command not in a final state, oldest first (loaded at start)."""

    # -- security (issue 15; store/security_rows.py) -------------------------------------------
    # Only hashes are stored. Times are epoch microseconds; what a role allows and how long a
    # session or token lives are fieldhub.security's decisions, passed in as times.

    @abc.abstractmethod
    async def put_user(self, user: UserRow) -> None:
        """Insert the user, or replace the stored user of that name (every column)."""

    @abc.abstractmethod
    async def get_user(self, username: str) -> UserRow | None:
        """One user by name."""

    @abc.abstractmethod
    async def list_users(self) -> list[UserRow]:
        """Every user, disabled ones included, by name (bytewise)."""

    @abc.abstractmethod
    async def count_users(self) -> int:
        """How many users exist, disabled ones included (0: first start, offer the setup)."""

    @abc.abstractmethod
    async def delete_user(self, username: str) -> bool:
        """Delete the user and their sessions at once; False when there was no such user.
        Their API tokens and audit entries stay."""

    @abc.abstractmethod
    async def insert_session(self, session: SessionRow) -> None:
        """Store a new session (StoreError if its token hash is already stored)."""

    @abc.abstractmethod
    async def get_session(self, token_hash: str) -> SessionRow | None:
        """One session by the hash of its cookie value, expired or not (the caller checks)."""

    @abc.abstractmethod
    async def touch_session(self, token_hash: str, last_seen_us: int) -> None:
        """Record activity on a session (never moves last_seen back); unknown: nothing."""

    @abc.abstractmethod
    async def delete_session(self, token_hash: str) -> None:
        """End one session (sign out); unknown: nothing."""

    @abc.abstractmethod
    async def delete_user_sessions(self, username: str) -> int:
        """End every session of a user (password change, disabled); returns how many."""

    @abc.abstractmethod
    async def delete_expired_sessions(self, now_us: int, idle_before_us: int) -> int:
        """Delete sessions whose absolute end has come (expires_us <= now_us) or last seen
        before `idle_before_us` (now minus the idle limit); returns how many."""

    @abc.abstractmethod
    async def insert_api_token(self, token: ApiTokenRow) -> None:
        """Store a new API token; StoreError if its token_id is taken (draw another id)."""

    @abc.abstractmethod
    async def get_api_token(self, token_id: str) -> ApiTokenRow | None:
        """One token by its public id, revoked or expired or not (the caller checks)."""

    @abc.abstractmethod
    async def list_api_tokens(self) -> list[ApiTokenRow]:
        """Every token, revoked and expired ones included, oldest first."""

    @abc.abstractmethod
    async def revoke_api_token(self, token_id: str, at_us: int) -> bool:
        """Revoke a token; False when unknown or already revoked (its first revocation time
        stays)."""

    @abc.abstractmethod
    async def touch_api_token(self, token_id: str, last_used_us: int) -> None:
        """Record a use of a token (never moves last_used back); unknown: nothing."""

    @abc.abstractmethod
    async def append_audit(self, entry: AuditEntry) -> int:
        """Append an entry to the audit log; returns its seq (ascending, never reused)."""

    @abc.abstractmethod
    async def list_audit(
        self,
        *,
        limit: int,
        before_seq: int | None = None,
        actor: str | None = None,
        action: str | None = None,
    ) -> list[AuditRow]:
        """Audit entries newest first (by seq); `before_seq` is the cursor (the previous
        page's last seq); `actor` and `action` match exactly."""

    @abc.abstractmethod
    async def put_device_credential(self, credential: DeviceCredentialRow) -> None:
        """Insert or replace a device's credential; it is active afterwards (revoked_us is
        cleared whatever the row says). The device need not exist in the devices table."""

    @abc.abstractmethod
    async def get_device_credential(self, device_id: str) -> DeviceCredentialRow | None:
        """One device's credential, revoked or not."""

    @abc.abstractmethod
    async def list_device_credentials(self) -> list[DeviceCredentialRow]:
        """Every device credential, revoked ones included, by device id (bytewise)."""

    @abc.abstractmethod
    async def revoke_device_credential(self, device_id: str, at_us: int) -> bool:
        """Revoke a device's credential; False when unknown or already revoked."""

    # -- rules and alarms (issue 16; store/rule_rows.py) ---------------------------------------
    # Documents and evaluation states are JSON values whose meaning is fieldhub.rules'; the
    # store makes the atomic decisions: version numbers, one open alarm per (rule, device),
    # the alarm transition table.

    @abc.abstractmethod
    async def put_rule_version(self, rule: RuleVersionRow) -> int:
        """Store `rule` as its rule's next version (1 for a new rule; `rule.version` is
        ignored) and make it current; returns the version. Atomic and gapless per rule: two
        concurrent calls get consecutive versions. A deleted rule given a version exists
        again, its history continuing."""

    @abc.abstractmethod
    async def get_rule(self, rule_id: str, version: int | None = None) -> RuleVersionRow | None:
        """The current version of a rule (None when unknown or deleted), or the given version
        of a rule, deleted or not (None when there is no such version)."""

    @abc.abstractmethod
    async def list_rules(self, include_deleted: bool = False) -> list[RuleVersionRow]:
        """Each rule's current version by rule id (bytewise); deleted ones only when asked
        (their `deleted_us` set)."""

    @abc.abstractmethod
    async def rule_history(self, rule_id: str) -> list[RuleVersionRow]:
        """Every version of a rule, oldest first (empty: unknown rule)."""

    @abc.abstractmethod
    async def delete_rule(self, rule_id: str, at_us: int) -> bool:
        """Mark a rule deleted (its versions stay); False when unknown or already deleted.
        Its evaluation states are the caller's to delete (`delete_rule_states`); its alarms
        stay (history)."""

    @abc.abstractmethod
    async def put_rule_states(self, states: Sequence[RuleStateRow]) -> None:
        """Insert or replace evaluation states, all in one transaction (the last one wins for
        a (rule, device) given twice)."""

    @abc.abstractmethod
    async def load_rule_states(self, rule_id: str | None = None) -> list[RuleStateRow]:
        """Every stored state (of one rule), by rule id then device id (bytewise)."""

    @abc.abstractmethod
    async def delete_rule_states(self, rule_id: str) -> int:
        """Delete a rule's states; returns how many."""

    @abc.abstractmethod
    async def open_alarm(self, alarm: AlarmRow) -> AlarmRow | None:
        """Store a new `active` alarm (acknowledgement and clearing columns empty, whatever
        the row says) with its first event (actor `rule:<rule_id>`); None, and nothing stored,
        when the (rule, device) already has an open (not cleared) alarm: the database decides,
        so concurrent raises store one. A repeated alarm id is a StoreError."""

    @abc.abstractmethod
    async def transition_alarm(
        self,
        alarm_id: str,
        state: AlarmState,
        at_us: int,
        actor: str,
        comment: str | None = None,
    ) -> AlarmRow | None:
        """Move an alarm to `state` (active -> acknowledged, active -> cleared, acknowledged ->
        cleared) and record the event; returns the row as it now is, or None when the alarm is
        unknown or the move is not allowed from its stored state (nothing changes)."""

    @abc.abstractmethod
    async def record_alarm_changes(self, changes: Sequence[AlarmRow]) -> list[AlarmRow | None]:
        """A rule engine's raises (`active` rows) and clears (`cleared` rows, with
        `cleared_us` and `cleared_by`) in order, in one transaction, each as `open_alarm` or
        `transition_alarm` would store it; returns each one's stored row or None (refused)."""

    @abc.abstractmethod
    async def get_alarm(self, alarm_id: str) -> AlarmRow | None:
        """One alarm by id."""

    @abc.abstractmethod
    async def list_alarms(
        self,
        *,
        state: AlarmState | Literal["open"] | None = None,
        device: str | None = None,
        rule_id: str | None = None,
        limit: int,
        before: tuple[int, str] | None = None,
    ) -> list[AlarmRow]:
        """Alarms newest first (by raised time, then id bytewise); `before` is the cursor (the
        previous page's last (raised_us, alarm_id)); state "open" is active or acknowledged
        (the dashboard lists the open ones first by asking for them first)."""

    @abc.abstractmethod
    async def alarm_events(self, alarm_id: str) -> list[AlarmEventRow]:
        """An alarm's events, oldest first (empty: unknown alarm)."""

    @abc.abstractmethod
    async def mark_notified(
        self, alarm_id: str, at_us: int, escalated: bool = False
    ) -> AlarmRow | None:
        """Count a notification sent about an alarm at `at_us` (in any state); `escalated`
        records the first escalation's time. Returns the row as it now is (None: unknown)."""

    @abc.abstractmethod
    async def append_notification_log(self, entry: NotificationEntry) -> int:
        """Append a delivery attempt to the notification log; returns its seq (ascending,
        never reused)."""

    @abc.abstractmethod
    async def append_notification_logs(self, entries: Sequence[NotificationEntry]) -> list[int]:
        """Append several entries in order in one transaction; returns their seqs."""

    @abc.abstractmethod
    async def list_notification_log(
        self,
        *,
        limit: int,
        before_seq: int | None = None,
        rule_id: str | None = None,
        alarm_id: str | None = None,
    ) -> list[NotificationRow]:
        """Log entries newest first (by seq); `before_seq` is the cursor (the previous page's
        last seq); `rule_id` and `alarm_id` match exactly."""

    # -- the window-control ML loop (issue 17; store/ml_rows.py) -------------------------------
    # Inputs, verdicts, requests, guard configurations and states are JSON values whose meaning
    # is fieldhub.ml's; the store numbers decisions and counts them.

    @abc.abstractmethod
    async def append_ml_decision(self, decision: MlDecisionRow) -> int:
        """Record a decision of the window loop; returns its seq (ascending, never reused;
        `decision.seq` is ignored). A decision id already stored is a StoreError."""

    @abc.abstractmethod
    async def append_ml_decisions(self, decisions: Sequence[MlDecisionRow]) -> list[int]:
        """Record several decisions in order in one transaction; returns their seqs."""

    @abc.abstractmethod
    async def list_ml_decisions(
        self,
        *,
        device: str | None = None,
        limit: int,
        before_seq: int | None = None,
        outcome: str | None = None,
    ) -> list[MlDecisionRow]:
        """Decisions newest first (by seq); `before_seq` is the cursor (the previous page's
        last seq); `device` and `outcome` match exactly."""

    @abc.abstractmethod
    async def get_ml_decision(self, decision_id: str) -> MlDecisionRow | None:
        """One decision by its id."""

    @abc.abstractmethod
    async def ml_decision_stats(
        self, *, since_us: int, device: str | None = None
    ) -> MlDecisionStats:
        """What the ML page shows of the decisions at or after `since_us` (of one device):
        the count per outcome (every outcome, 0 when none), a 10-bucket confidence histogram
        and the latency p50/p99 (nearest rank), all counted by the database."""

    @abc.abstractmethod
    async def delete_ml_decisions_before(self, cutoff_us: int) -> int:
        """Delete the decisions made before `cutoff_us`; returns how many (retention)."""

    @abc.abstractmethod
    async def put_ml_device(self, device: MlDeviceRow) -> None:
        """Insert or replace a device's guard configuration and state."""

    @abc.abstractmethod
    async def get_ml_device(self, device_id: str) -> MlDeviceRow | None:
        """A device's guard configuration and state (None: never stored)."""

    @abc.abstractmethod
    async def list_ml_devices(self) -> list[MlDeviceRow]:
        """Every device's guard configuration and state, by device id (bytewise)."""

    # -- retention (store/retention.py) --------------------------------------------------------

    @abc.abstractmethod
    async def delete_older(
        self,
        tier: Tier,
        cutoff_us: int,
        *,
        selector: Selector,
        keep: Sequence[Selector],
    ) -> int:
        """Delete the tier's rows older than `cutoff_us` of the selected series, except those
        `keep` selects; returns how many."""

    @abc.abstractmethod
    async def dead_letter_bytes(self) -> int:
        """The dead letters' size as their byte budget counts it (dead_letter_rows.py)."""

    @abc.abstractmethod
    async def delete_dead_letters_before(
        self, cutoff_us: int, *, reasons: Sequence[str] = (), except_reasons: Sequence[str] = ()
    ) -> int:
        """Delete dead letters received before `cutoff_us`, of `reasons` when given, else of
        every reason but `except_reasons`; returns how many."""

    @abc.abstractmethod
    async def prune_dead_letters(self, max_bytes: int) -> int:
        """Delete the oldest dead letters until the rest fit in `max_bytes`; returns how many."""

    @abc.abstractmethod
    async def fold_rollups(self) -> int:
        """Bring the rollup tables up to date with every stored reading; returns how many
        readings were added. SQLite defers them (a fold every second, and at open and close);
        reads never depend on it, they add what is pending. PostgreSQL: 0, always current."""

    def rollups_problem(self) -> str | None:
        """Why the rollups have fallen behind the stored readings (SQLite's folds keep failing),
        in words for /healthz, or None. PostgreSQL's batches update them: never behind."""
        return None

    @abc.abstractmethod
    async def maintain(self, now_us: int) -> None:
        """Periodic upkeep the engine needs (PostgreSQL: partitions ahead of time)."""

    @abc.abstractmethod
    async def size_bytes(self) -> int:
        """The database's size on disk."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreError when the database cannot answer a trivial query."""
