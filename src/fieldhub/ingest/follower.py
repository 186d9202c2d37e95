"""An API process beside ingest workers follows the broker instead of storing readings.

`fieldhub up --no-ingest` serves the API and dashboard from the database the workers fill
(`fieldhub ingest --workers N`). It still needs what arrives, as it arrives: the live view pushes
readings, and the command service decides commands from device acks and state echoes. So it runs
the same decode-and-batch pipeline on a plain (not shared) subscription with a clean session,
and `Follower` stands in for the store's `write_batch`: readings and dead letters are the
workers' to store; only command replies are written, so the process that waits for an ack learns
of it at once. Workers write the same replies; whichever is second finds the command final and
changes nothing (the store's conditional transitions), and the command service then reads the
row the other one wrote (`CommandService.on_commit`).

New devices and presence changes are derived here from the messages seen, against the devices
the store knew at start, for the live device list. A device whose first message the API missed
(it was down) appears on the next page load instead of live.
"""

from __future__ import annotations

from fieldhub.store.base import Store
from fieldhub.store.types import PresenceChange, WriteBatch, WriteResult

# Devices listed per query when loading what the store knows at start.
PAGE = 1000


class Follower:
    """The `write_batch` of an API-only process (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._presence: dict[str, str] = {}

    async def load(self, now_us: int) -> None:
        """The devices the workers have stored so far, with their presence."""
        after: str | None = None
        while True:
            page = await self.store.list_devices(
                profile=None, presence=None, search=None, limit=PAGE, after=after, now_us=now_us
            )
            for device in page:
                self._presence[device.device_id] = device.presence
            if len(page) < PAGE:
                return
            after = page[-1].device_id

    async def write_batch(self, batch: WriteBatch) -> WriteResult:
        result = WriteResult()
        if batch.command_replies:
            result = await self.store.write_batch(WriteBatch(command_replies=batch.command_replies))
        known = self._presence
        for decoded in batch.decoded:
            device_id = decoded.device_id
            if device_id not in known:
                result.new_devices.append(device_id)
                known[device_id] = "online"
            state = decoded.presence
            if state is not None and known[device_id] != state:
                known[device_id] = state
                result.presence_changes.append(
                    PresenceChange(device_id, state, decoded.received_us)
                )
        return result
