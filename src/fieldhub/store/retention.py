"""Retention: how long each tier of data is kept, and the job that deletes what is older.

The job also watches the database's size (every WATCH_S: `fieldhub_database_bytes`, WAL
included, and the disk budget) and the dead letters' bounds: older than their days (per reason)
are deleted with the hourly run, and past their byte budget the oldest are deleted within
seconds (an estimate follows each committed batch's dead letters; docs/limits.md).

Three tiers: raw readings, minute rollups, hour rollups (defaults 30 days, 1 year, forever).
Rules may override a tier for one device, one metric, or one device's metric; the most specific
rule that sets a tier wins for a series (device + metric, then device, then metric, then the
default), so a sweep never deletes what a more specific rule keeps. Series are never deleted
as a whole: the rollups outlive the raw readings they summarise, which is what keeps a year of
charts fast and small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from fieldhub import clock
from fieldhub.store.base import Store
from fieldhub.store.dead_letter_rows import ROW_OVERHEAD_BYTES
from fieldhub.store.ops import Count, Script
from fieldhub.store.plan import (
    DEAD_LETTER_DETAIL_MAX_CHARS,
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_TOPIC_MAX_CHARS,
)
from fieldhub.store.types import TIERS, Selector, Tier, WriteBatch, WriteResult

log = logging.getLogger("fieldhub.retention")

US_PER_DAY = 86_400 * 1_000_000
# The disk-budget warning fires from this share of the budget on, before it is hit.
BUDGET_WARN_FRACTION = 0.9
FIRST_RUN_DELAY_S = 300.0
# How often the size and the dead letters' byte budget are looked at (sooner when a batch's dead
# letters pass the budget): `fieldhub_database_bytes` follows the database within this.
WATCH_S = 15.0
# Past their budget the dead letters are cut to this share of it, so that a flood is not pruned
# again at every batch.
PRUNE_TO_FRACTION = 0.9
# A budget warning is logged again after this long while it holds.
BUDGET_LOG_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class Rule:
    """Days to keep per tier for the selected series; None in `days` = forever, a tier absent
    from `days` = this rule says nothing about it."""

    selector: Selector
    days: dict[Tier, float | None]


@dataclass(frozen=True, slots=True)
class Sweep:
    """One DELETE: a tier's rows older than `cutoff_us` of the series `selector` covers,
    except those of `keep` (more specific rules decide for them)."""

    tier: Tier
    cutoff_us: int
    selector: Selector
    keep: tuple[Selector, ...]


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The defaults and the override rules (Settings `retention_*`)."""

    raw_days: float | None = 30.0
    minute_days: float | None = 365.0
    hour_days: float | None = None
    overrides: tuple[Rule, ...] = ()
    # The window loop's decision log (one row per decision; a backbone asking every minute for
    # 1,000 devices writes 1.4 million a day): kept this long, None forever.
    ml_decision_days: float | None = 90.0
    # Dead letters: kept this long (None: forever) unless their reason has days of its own, and
    # never more than dead_letter_max_bytes in all, the oldest deleted first (None: no bound).
    dead_letter_days: float | None = 30.0
    dead_letter_reason_days: tuple[tuple[str, float | None], ...] = ()
    dead_letter_max_bytes: int | None = 100 * 2**20

    def dead_letter_rules(self) -> dict[str, float | None]:
        """Days to keep dead letters, per reason (`*`: every reason without a rule)."""
        return {"*": self.dead_letter_days, **dict(self.dead_letter_reason_days)}

    def rules(self) -> list[Rule]:
        default = Rule(
            Selector(), {"raw": self.raw_days, "minute": self.minute_days, "hour": self.hour_days}
        )
        return [default, *self.overrides]

    def sweeps(self, now_us: int) -> list[Sweep]:
        """The deletes that apply the policy at `now_us`."""
        out = []
        rules = self.rules()
        for tier in TIERS:
            deciding = [r for r in rules if tier in r.days]
            for rule in deciding:
                days = rule.days[tier]
                if days is None:
                    continue  # kept forever; it still shields its series (below)
                keep = tuple(
                    other.selector
                    for other in deciding
                    if other.selector.specificity > rule.selector.specificity
                    and other.selector.overlaps(rule.selector)
                )
                out.append(Sweep(tier, now_us - int(days * US_PER_DAY), rule.selector, keep))
        return out


@dataclass
class RetentionJob:
    """Applies the policy now and then (at start, then every `interval_s`), with a log line per
    run, Prometheus metrics, and a warning when the database nears its disk budget."""

    store: Store
    policy: RetentionPolicy
    registry: CollectorRegistry
    interval_s: float = 3600.0
    disk_budget_bytes: int | None = None
    clock_us: Callable[[], int] = field(default=clock.now_us)
    runs: int = 0

    def __post_init__(self) -> None:
        # The dead letters' size as their budget counts it: measured, then followed batch by
        # batch (`on_commit`) until the next measure; None: not measured yet.
        self._dead_bytes: int | None = None
        self._prune_now: asyncio.Event | None = None
        self._budget_logged_at: float | None = None
        self._dead_letter_bytes = Gauge(
            "fieldhub_dead_letter_bytes",
            "The dead letters' size as their byte budget counts it",
            registry=self.registry,
        )
        self._dead_letters_pruned = Counter(
            "fieldhub_dead_letters_pruned",
            "Dead letters deleted by their bounds: `age` (their days) or `bytes` (their budget, "
            "oldest first)",
            ["why"],
            registry=self.registry,
        )
        for why in ("age", "bytes"):
            self._dead_letters_pruned.labels(why)
        self._deleted = Counter(
            "fieldhub_retention_deleted_rows",
            "Rows retention deleted, by tier",
            ["tier"],
            registry=self.registry,
        )
        self._last_run = Gauge(
            "fieldhub_retention_last_run_timestamp_seconds",
            "When retention last completed",
            registry=self.registry,
        )
        self._run_seconds = Gauge(
            "fieldhub_retention_last_run_seconds",
            "How long the last retention run took (longer than its interval: it falls behind)",
            registry=self.registry,
        )
        self._db_bytes = Gauge(
            "fieldhub_database_bytes", "Size of the database on disk", registry=self.registry
        )
        self._over_budget = Gauge(
            "fieldhub_database_budget_warning",
            "1 while the database uses 90 % or more of its disk budget",
            registry=self.registry,
        )

    async def run_once(self) -> dict[Tier, int]:
        """Apply the policy at the clock's now; returns rows deleted per tier."""
        started = time.perf_counter()
        now_us = self.clock_us()
        deleted: dict[Tier, int] = dict.fromkeys(TIERS, 0)
        # Readings not yet in the rollups (SQLite) would bring back rollup rows cut here.
        await self.store.fold_rollups()
        for sweep in self.policy.sweeps(now_us):
            count = await self.store.delete_older(
                sweep.tier, sweep.cutoff_us, selector=sweep.selector, keep=sweep.keep
            )
            deleted[sweep.tier] += count
        decisions = 0
        if self.policy.ml_decision_days is not None:
            cutoff = now_us - int(self.policy.ml_decision_days * US_PER_DAY)
            decisions = await self.store.delete_ml_decisions_before(cutoff)
            self._deleted.labels("ml_decisions").inc(decisions)
        dead = await self._dead_letters_by_age(now_us)
        await self.store.maintain(now_us)
        for tier, count in deleted.items():
            self._deleted.labels(tier).inc(count)
        self.runs += 1
        self._last_run.set(now_us / 1e6)
        size = await self.store.size_bytes()
        self._db_bytes.set(size)
        took = time.perf_counter() - started
        self._run_seconds.set(took)
        log.info(
            "retention: deleted %d raw readings, %d minute and %d hour rollup rows, %d window "
            "decisions and %d dead letters in %.1f s; database %.1f MiB",
            deleted["raw"],
            deleted["minute"],
            deleted["hour"],
            decisions,
            dead,
            took,
            size / 2**20,
        )
        if took > self.interval_s:
            # Deleting yields the writer to ingest between transactions, so under a write load
            # the database can take it has less time left: what arrives outgrows what goes.
            log.warning(
                "retention took %.0f s, longer than its interval of %.0f s: it is not keeping "
                "up with what ingest writes, and the database grows. Keep raw readings fewer "
                "days (FIELDHUB_RETENTION_RAW_DAYS) or move to PostgreSQL, which drops whole "
                "months (docs/operations.md: retention under a heavy write load)",
                took,
                self.interval_s,
            )
        self._check_budget(size)
        return deleted

    async def _dead_letters_by_age(self, now_us: int) -> int:
        rules = self.policy.dead_letter_rules()
        own = [reason for reason in rules if reason != "*"]
        deleted = 0
        for reason, days in rules.items():
            if days is None:
                continue
            cutoff = now_us - int(days * US_PER_DAY)
            if reason == "*":
                deleted += await self.store.delete_dead_letters_before(cutoff, except_reasons=own)
            else:
                deleted += await self.store.delete_dead_letters_before(cutoff, reasons=[reason])
        self._dead_letters_pruned.labels("age").inc(deleted)
        if deleted:
            self._dead_bytes = None  # measured again at the next watch
        return deleted

    def on_commit(self, batch: WriteBatch, _written: WriteResult, _committed_us: int) -> None:
        """Ingest's commit listener: follow the dead letters' size; past the budget, wake the
        watch to prune now."""
        if not batch.dead_letters or self._dead_bytes is None:
            return
        self._dead_bytes += sum(
            min(len(d.payload), DEAD_LETTER_MAX_BYTES)
            + min(len(d.topic), DEAD_LETTER_TOPIC_MAX_CHARS)
            + min(len(d.detail), DEAD_LETTER_DETAIL_MAX_CHARS)
            + ROW_OVERHEAD_BYTES
            for d in batch.dead_letters
        )
        # The gauge (and /api/v1/system) follows batch by batch, not only at the next watch.
        self._dead_letter_bytes.set(self._dead_bytes)
        budget = self.policy.dead_letter_max_bytes
        if budget is not None and self._dead_bytes > budget and self._prune_now is not None:
            self._prune_now.set()

    async def watch_once(self) -> None:
        """The database's size and disk budget; the dead letters' byte budget."""
        size = await self.store.size_bytes()
        self._db_bytes.set(size)
        self._check_budget(size)
        budget = self.policy.dead_letter_max_bytes
        if self._dead_bytes is None or (budget is not None and self._dead_bytes > budget):
            self._dead_bytes = await self.store.dead_letter_bytes()
        if budget is not None and self._dead_bytes > budget:
            pruned = await self.store.prune_dead_letters(int(budget * PRUNE_TO_FRACTION))
            self._dead_letters_pruned.labels("bytes").inc(pruned)
            log.warning(
                "dead letters passed their budget of %.1f MiB (FIELDHUB_DEAD_LETTER_MAX_MB): "
                "deleted the oldest %d",
                budget / 2**20,
                pruned,
            )
            self._dead_bytes = await self.store.dead_letter_bytes()
        self._dead_letter_bytes.set(self._dead_bytes)

    async def watch(self) -> None:
        """Run `watch_once` forever (a task): every WATCH_S, or at once when a batch's dead
        letters pass their budget. Failures are logged and retried."""
        self._prune_now = asyncio.Event()
        while True:
            try:
                await self.watch_once()
            except Exception:
                log.exception("watching the database's size failed; retrying in %.0f s", WATCH_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._prune_now.wait(), WATCH_S)
            self._prune_now.clear()

    def _check_budget(self, size: int) -> None:
        budget = self.disk_budget_bytes
        near = budget is not None and size >= BUDGET_WARN_FRACTION * budget
        self._over_budget.set(1 if near else 0)
        if not near:
            self._budget_logged_at = None
            return
        now = time.monotonic()
        if self._budget_logged_at is not None and now - self._budget_logged_at < BUDGET_LOG_EVERY_S:
            return
        self._budget_logged_at = now
        if budget is not None:
            log.warning(
                "the database uses %.1f MiB of its %.1f MiB disk budget (%.0f %%): shorten "
                "retention (FIELDHUB_RETENTION_RAW_DAYS, ...) or raise FIELDHUB_DISK_BUDGET_MB",
                size / 2**20,
                budget / 2**20,
                100 * size / budget,
            )

    async def run(self) -> None:
        """Run forever (a task): first FIRST_RUN_DELAY_S after start (a start, and the backlog
        that often follows it, never waits for a large delete), then every interval. Failures
        are logged and retried at the next interval; ingest never waits for retention."""
        await asyncio.sleep(min(self.interval_s, FIRST_RUN_DELAY_S))
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("retention run failed; retrying in %.0f s", self.interval_s)
            await asyncio.sleep(self.interval_s)


# Where each tier lives, its time column, and how much time one row spans.
TIER_TABLES: dict[Tier, tuple[str, str, int]] = {
    "raw": ("readings", "ts", 0),
    "minute": ("rollup_minute", "bucket", 60 * 1_000_000),
    "hour": ("rollup_hour", "bucket", 3600 * 1_000_000),
}


# A retention sweep deletes in transactions of at most this many rows (and series), one series
# at a time by its primary key: one DELETE of a tier's whole backlog (1.5 million rows for five
# minutes of 5,000 readings/s) held SQLite's single writer for seconds and stalled ingest behind
# it. Between transactions queued ingest batches commit (the writer is FIFO) and the sweep pauses.
SWEEP_TX_ROWS = 10_000
SWEEP_TX_SERIES = 256


def series_sql(selector: Selector, keep: Sequence[Selector], ph: Callable[[object], str]) -> str:
    """The series (device_id, metric_id) a sweep covers: those `selector` matches, except those
    of `keep`; `ph(value)` adds a parameter and returns its placeholder. Every series the writer
    has stored is in device_metrics, and rollups only summarise stored readings."""

    def match(s: Selector) -> str:
        # coalesce: a rule naming a device or metric that does not exist (yet) matches nothing,
        # rather than NULL, which under NOT would shield every series.
        parts = []
        if s.device is not None:
            parts.append(
                f"device_id = coalesce((SELECT id FROM devices WHERE uid = {ph(s.device)}), -1)"
            )
        if s.metric is not None:
            parts.append(
                f"metric_id = coalesce((SELECT id FROM metrics WHERE name = {ph(s.metric)}), -1)"
            )
        return " AND ".join(parts) or "TRUE"

    sql = f"SELECT device_id, metric_id FROM device_metrics WHERE {match(selector)}"
    for other in keep:
        sql += f" AND NOT ({match(other)})"
    return sql + " ORDER BY device_id, metric_id"


def delete_series_before(
    mark: Callable[[int], str],
    tier: Tier,
    cutoff_us: int,
    series: Sequence[tuple[int, int]],
    start: int,
) -> Script[tuple[int, int]]:
    """One transaction of a sweep: from `series[start]` on, delete each series' rows of `tier`
    older than the cutoff until SWEEP_TX_ROWS rows or SWEEP_TX_SERIES series are done; returns
    (rows deleted, where the next transaction starts). A series with more rows than the
    transaction has left is cut at its oldest rows and resumed by the next one. A rollup row
    goes only when all the time it summarises is older than the cutoff."""
    table, column, span = TIER_TABLES[tier]
    bound = cutoff_us - span + (1 if span else 0)
    series_is = f"device_id = {mark(1)} AND metric_id = {mark(2)}"
    # The time of the series' (cap + 1)-th oldest row before the bound, if it has that many:
    # deleting below it deletes exactly `cap` rows, a primary-key range either way.
    sql = (
        f"DELETE FROM {table} WHERE {series_is} AND {column} < coalesce(("
        f"SELECT {column} FROM {table} WHERE {series_is} AND {column} < {mark(3)} "
        f"ORDER BY {column} LIMIT 1 OFFSET {mark(4)}), {mark(3)})"
    )
    deleted = 0
    at = start
    while at < len(series) and at - start < SWEEP_TX_SERIES and deleted < SWEEP_TX_ROWS:
        cap = SWEEP_TX_ROWS - deleted
        device_id, metric_id = series[at]
        ((count,),) = yield Count(sql, (device_id, metric_id, bound, cap))
        deleted += int(count)
        if count < cap:
            at += 1
    return deleted, at
