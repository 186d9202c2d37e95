"""A bounded ring buffer of readings taken while offline, and the backfill batches built from it.

Overflow policy (as mqtt_as's queue): the oldest entry is discarded and the discard is counted,
because the newest readings say most about the present and a count tells fieldhub what is missing.
Entries carry absolute sequence numbers (`first` .. `first + count`), so a batch in flight can be
confirmed later even if overflow discarded part of it meanwhile.
"""

from fieldhub_node.jsonutil import dumps

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass

# A backfill message is at most this many bytes of JSON. umqtt.simple sends a message with one
# write from one buffer, so a batch must fit the heap twice (entries + text) with room to spare;
# 8 KiB does on an ESP32-WROOM (~100 KB free) and is far below fieldhub's 64 KiB payload limit.
MAX_BATCH_BYTES = 8 * 1024
# And at most this many entries, so one resend after a lost PUBACK repeats little.
MAX_BATCH_ENTRIES = 64


class RingBuffer:
    """Fixed-capacity FIFO that discards (and counts) its oldest entry when full."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        # Preallocated once: appends never grow a list on the device's fragmented heap.
        self._slots = [None] * capacity  # type: list[Any]
        self._head = 0
        self.count = 0
        # Absolute number of the oldest entry held; grows forever (ints are unbounded).
        self.first = 0
        self.dropped = 0

    def __len__(self) -> int:
        return self.count

    def append(self, entry: Any) -> None:
        """Add an entry; when full, discard the oldest first and count it in `dropped`."""
        if self.count == self.capacity:
            self._pop()
            self.dropped += 1
        self._slots[(self._head + self.count) % self.capacity] = entry
        self.count += 1

    def _pop(self) -> None:
        self._slots[self._head] = None
        self._head = (self._head + 1) % self.capacity
        self.count -= 1
        self.first += 1

    def get(self, absolute: int) -> Any:
        """The entry with absolute number `absolute` (must be held)."""
        offset = absolute - self.first
        if not 0 <= offset < self.count:
            raise IndexError("entry %d is not buffered" % absolute)
        return self._slots[(self._head + offset) % self.capacity]

    def release_until(self, end: int) -> int:
        """Discard every entry numbered below `end` (sent and acknowledged); returns how many."""
        released = 0
        while self.count and self.first < end:
            self._pop()
            released += 1
        return released


def entry_text(ts_ms: int, values: dict[str, Any]) -> str:
    """One backfill entry as JSON text: `{"ts":<epoch ms>,"values":{...}}`."""
    return dumps({"ts": ts_ms, "values": values})


def next_batch(buffer: RingBuffer, max_bytes: int = MAX_BATCH_BYTES, max_entries: int = MAX_BATCH_ENTRIES) -> tuple[bytes, int] | None:
    """The oldest buffered entries as one JSON array of at most `max_bytes`, and the absolute
    number just past the last entry included (pass it to `release_until` once acknowledged).

    None when the buffer is empty. An entry too large for any batch on its own cannot be sent
    within the limit; it goes alone rather than blocking the buffer forever.
    """
    if not buffer.count:
        return None
    parts = []  # type: list[str]
    size = 2  # the brackets
    index = buffer.first
    end = buffer.first + buffer.count
    while index < end and len(parts) < max_entries:
        ts_ms, values = buffer.get(index)
        text = entry_text(ts_ms, values)
        extra = len(text) + (1 if parts else 0)  # a comma between entries
        if parts and size + extra > max_bytes:
            break
        parts.append(text)
        size += extra
        index += 1
    return ("[" + ",".join(parts) + "]").encode(), index
