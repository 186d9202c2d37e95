"""The command service's Prometheus metrics (their names are a contract: dashboards use them)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fieldhub.clock import US_PER_S
from fieldhub.protocol.command_states import CommandState
from fieldhub.store.types import CommandRow

# From a few milliseconds (a device on the LAN answering an ack) to the default 10 s timeout and
# the window-control stack's 30 s one, where an answer is decided by the next periodic report.
ROUND_TRIP_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ANSWERED = frozenset({CommandState.SUCCEEDED, CommandState.FAILED})


class CommandMetrics:
    """Transitions stored, late replies, round trips, and how many commands are not yet final."""

    def __init__(self, registry: CollectorRegistry, *, active_count: Callable[[], int]) -> None:
        self._transitions = Counter(
            "fieldhub_command_transitions",
            "Command state transitions stored, by the state entered",
            ["state"],
            registry=registry,
        )
        self._late_replies = Counter(
            "fieldhub_command_late_replies",
            "Device answers to commands already final or unknown (nothing changed)",
            registry=registry,
        )
        self._round_trip = Histogram(
            "fieldhub_command_round_trip_seconds",
            "From a command's creation to the device's answer (succeeded or failed)",
            buckets=ROUND_TRIP_BUCKETS_S,
            registry=registry,
        )
        Gauge("fieldhub_commands_active", "Commands not yet final", registry=registry).set_function(
            active_count
        )

    def stored(self, row: CommandRow) -> None:
        """Count the transitions a store write added (`row.history`)."""
        for step in row.history:
            self._transitions.labels(step.state.value).inc()

    def late_replies(self, count: int) -> None:
        """Count device answers that changed nothing."""
        self._late_replies.inc(count)

    def ended(self, row: CommandRow) -> None:
        """A command became final: time its round trip when the device answered."""
        if row.state in ANSWERED:
            self._round_trip.observe((row.updated_us - row.created_us) / US_PER_S)
