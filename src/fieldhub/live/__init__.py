"""Live updates for viewers: subscriptions, per-series coalescing and WebSocket fan-out."""
