"""The in-process event bus: committed data for live views, rules and other consumers."""

from fieldhub.events.bus import (
    AlarmChanged,
    BusEvent,
    CommandChanged,
    Committed,
    EventBus,
    Subscription,
)

__all__ = ["AlarmChanged", "BusEvent", "CommandChanged", "Committed", "EventBus", "Subscription"]
