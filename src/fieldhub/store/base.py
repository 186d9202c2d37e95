"""The storage interface: what ingest, the API, commands and retention ask of a database.

`core.SqlStore` implements it once for every SQL engine; `sqlite.py` and `postgres.py` add only
how they connect and run statements. The rows it speaks are in `types.py`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence

from fieldhub.protocol.command_states import CommandState
from fieldhub.store.rollups import Part, Partial, combine, plan_series
from fieldhub.store.types import (
    Aggregate,
    CommandOutcome,
    CommandRow,
    DeadLetterRow,
    DeviceRow,
    MetricSummary,
    PresenceEvent,
    PresenceState,
    ReadingRow,
    Selector,
    SeriesPoint,
    Tier,
    TimeRow,
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

    @abc.abstractmethod
    async def write_batch(self, batch: WriteBatch) -> WriteResult:
        """Store a batch in one transaction. Readings already stored (same device, metric and
        time) are counted as duplicates and left as they were."""

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
    async def maintain(self, now_us: int) -> None:
        """Periodic upkeep the engine needs (PostgreSQL: partitions ahead of time)."""

    @abc.abstractmethod
    async def size_bytes(self) -> int:
        """The database's size on disk."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreError when the database cannot answer a trivial query."""
