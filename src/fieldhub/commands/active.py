"""The commands not yet final, as the service holds them in memory between store writes.

The store is the truth; this is the view of it the service follows (what each command's last
accepted transition left, whether a publish is in flight) so that dispatch, deadlines and the
ingest listener decide without a read. Per device, commands keep their creation order: pending
commands of one device go out oldest first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fieldhub.commands.formats import CommandFormat, Expectation
from fieldhub.store.types import CommandRow, CommandTransition

CommandKey = tuple[str, str]  # (device id, command id)


def key_of(row: CommandRow) -> CommandKey:
    """The key a command is tracked under."""
    return (row.device_id, row.command_id)


@dataclass(slots=True)
class ActiveCommand:
    """A command not yet final, as the service tracks it."""

    row: CommandRow
    fmt: CommandFormat
    expectation: Expectation | None
    publishing: bool = False
    published_us: int = 0
    # Every transition so far (so an API call waiting for the end needs no read), or None for a
    # command loaded at start, whose earlier history is only in the store.
    history: list[CommandTransition] | None = None


class ActiveCommands:
    """The tracked commands by key, and each device's in creation order."""

    def __init__(self) -> None:
        self._by_key: dict[CommandKey, ActiveCommand] = {}
        self._by_device: dict[str, list[str]] = {}

    def __len__(self) -> int:
        """How many commands are not yet final."""
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        """True while the command under `key` is tracked."""
        return key in self._by_key

    def add(self, active: ActiveCommand) -> None:
        """Track a command (after the ones its device already has)."""
        row = active.row
        self._by_key[key_of(row)] = active
        self._by_device.setdefault(row.device_id, []).append(row.command_id)

    def get(self, key: CommandKey) -> ActiveCommand | None:
        """The tracked command under `key`, if any."""
        return self._by_key.get(key)

    def remove(self, key: CommandKey) -> ActiveCommand | None:
        """Stop tracking a command; returns it, or None when it was not tracked."""
        active = self._by_key.pop(key, None)
        if active is None:
            return None
        device_id, command_id = key
        ids = self._by_device.get(device_id)
        if ids is not None:
            ids.remove(command_id)
            if not ids:
                del self._by_device[device_id]
        return active

    def has_device(self, device_id: str) -> bool:
        """True when the device has a command not yet final."""
        return device_id in self._by_device

    def queued(self, device_id: str) -> int:
        """How many of the device's commands are not yet final."""
        return len(self._by_device.get(device_id, ()))

    def of_device(self, device_id: str) -> list[ActiveCommand]:
        """The device's commands, oldest first (a copy: callers may end some meanwhile)."""
        return [self._by_key[(device_id, c)] for c in self._by_device.get(device_id, ())]

    def devices(self) -> list[str]:
        """The devices with commands not yet final (a copy)."""
        return list(self._by_device)

    def __iter__(self) -> Iterator[ActiveCommand]:
        """Every tracked command (a copy of the current set)."""
        return iter(list(self._by_key.values()))
