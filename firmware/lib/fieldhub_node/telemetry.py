"""Native telemetry payloads: `{"v":1,"ts":<epoch ms>,"seq":n,<readings>}` (docs/protocol.md).

`seq` counts every reading the node takes from boot (live or buffered), so gaps in fieldhub's
stored `seq` show exactly what was lost. `ts` is the device's own clock in epoch ms, present only
once NTP has set it, and strictly increasing: fieldhub keys readings by (device, metric, ts), so
two readings in one millisecond would collapse into one row.
"""

from fieldhub_node import PAYLOAD_VERSION
from fieldhub_node.jsonutil import dumps, is_number

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass


def clean_readings(readings: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The readings that are finite numbers (booleans as 0/1), and how many were not.

    A sensor glitch (NaN from a bad checksum, None from a missing sensor) must not make the whole
    message invalid JSON or a dead letter: the other readings still go out.
    """
    out = {}
    bad = 0
    for name in readings:
        value = readings[name]
        if isinstance(value, bool):
            out[name] = 1 if value else 0
        elif is_number(value):
            out[name] = value
        else:
            bad += 1
    return out, bad


def telemetry_payload(ts_ms: int | None, seq: int, readings: dict[str, Any]) -> bytes:
    """Compact JSON telemetry; without a synced clock (`ts_ms` None) fieldhub uses receive time."""
    message = {"v": PAYLOAD_VERSION}  # type: dict[str, Any]
    if ts_ms is not None:
        message["ts"] = ts_ms
    message["seq"] = seq
    for name in readings:
        message[name] = readings[name]
    return dumps(message).encode()


class Stamper:
    """Hands out `seq` (from 0) and strictly increasing device times."""

    def __init__(self) -> None:
        self.seq = 0
        self._last_ts_ms = -1

    def next(self, epoch_ms: int | None) -> tuple[int, int | None]:
        """(seq, ts) for the next reading; ts None while the clock is not synced."""
        seq = self.seq
        self.seq += 1
        if epoch_ms is None:
            return seq, None
        # The clock may stand still between two fast readings or step back when NTP corrects it.
        ts_ms = epoch_ms if epoch_ms > self._last_ts_ms else self._last_ts_ms + 1
        self._last_ts_ms = ts_ms
        return seq, ts_ms
