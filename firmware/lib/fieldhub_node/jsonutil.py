"""Compact JSON and number checks that behave the same on MicroPython and CPython."""

import json
import math

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are never evaluated, the names need not exist
    pass


def dumps(obj: Any) -> str:
    """Compact JSON text (no spaces): every byte counts on a device's uplink."""
    try:
        return json.dumps(obj, separators=(",", ":"))
    except TypeError:
        # MicroPython before 1.20 has no `separators` argument; its output is still valid JSON.
        return json.dumps(obj)


def is_number(value: Any) -> bool:
    """A finite int or float; bools are not numbers here (JSON `true` is not a position)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        # NaN/inf would be written as NaN/Infinity, which is not JSON and fieldhub rejects.
        return not (math.isnan(value) or math.isinf(value))
    return False
