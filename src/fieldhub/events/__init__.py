"""The in-process event bus: committed data for live views, rules and other consumers."""

from fieldhub.events.bus import Committed, EventBus, Subscription

__all__ = ["Committed", "EventBus", "Subscription"]
