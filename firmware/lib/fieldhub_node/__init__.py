"""fieldhub_node: the pure device logic of a fieldhub ESP32 node (sans-I/O).

This package runs unchanged under MicroPython on the ESP32 and under CPython inside fieldhub's
simulator and host tests. It never touches a socket, a pin or a clock: callers pass the time in
and carry out the actions it returns (see node.py). MicroPython rules for every module here: no
dataclasses, no `from __future__`, no `typing` at run time (annotations are not evaluated by
MicroPython, so the typing names are imported under try/except for CPython and mypy only), `json`
not orjson, small allocations.
"""

# Version of the native telemetry envelope (`v` in every telemetry object). A change of the
# payload shape bumps it (docs/protocol.md); fieldhub keeps `v` as an attribute, not a reading.
PAYLOAD_VERSION = 1
# Version of this firmware core, reported by `ping`.
CORE_VERSION = "0.1.0"
