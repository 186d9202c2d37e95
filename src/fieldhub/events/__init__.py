"""The in-process event bus: committed data for live views, rules and other consumers."""

from fieldhub.events.bus import BusEvent, CommandChanged, Committed, EventBus, Subscription

__all__ = ["BusEvent", "CommandChanged", "Committed", "EventBus", "Subscription"]
