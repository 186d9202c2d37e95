"""The native command contract: parse, validate, execute once, acknowledge.

Down on `devices/{id}/commands`: `{"id":"<uuid>","name":"...","params":{...}}`.
Up on `devices/{id}/commands/ack`: `{"id","status":"ok","result":{...}}` or
`{"id","status":"error","error":"..."}`.

A command without a usable `id` cannot be acknowledged (fieldhub would not know which command the
ack answers): it is counted in `rejected` and otherwise ignored. Everything else gets exactly one
ack per id; a repeated id (QoS 1 redelivery, a retry by fieldhub) re-sends the stored ack without
running the command again.
"""

import json

from fieldhub_node.jsonutil import dumps

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass

# Commands are a few hundred bytes; anything much larger is a mistake or an attack, and parsing it
# could exhaust the device's heap.
MAX_COMMAND_BYTES = 2048
# UUIDs are 36 characters; leave room for other id schemes, not for essays.
MAX_ID_CHARS = 64
MAX_ERROR_CHARS = 200
# Acks remembered for dedupe. A redelivery arrives within seconds of the original; 32 acks of
# ~100 bytes cost ~4 KB of heap, and fieldhub never has that many commands in flight per node.
RECENT_ACKS = 32


class RecentAcks:
    """The last `capacity` command ids and their ack payloads, oldest forgotten first."""

    def __init__(self, capacity: int = RECENT_ACKS) -> None:
        self.capacity = capacity
        self._acks = {}  # type: dict[str, bytes]
        self._order = []  # type: list[str]

    def get(self, command_id: str) -> bytes | None:
        return self._acks.get(command_id)

    def put(self, command_id: str, ack: bytes) -> None:
        if command_id not in self._acks:
            self._order.append(command_id)
            if len(self._order) > self.capacity:
                del self._acks[self._order.pop(0)]
        self._acks[command_id] = ack

    def __len__(self) -> int:
        return len(self._order)


class CommandError(ValueError):
    """A command that was understood well enough to answer, with an error."""


def ack_ok(command_id: str, result: dict[str, Any]) -> bytes:
    """`{"id":...,"status":"ok","result":{...}}`."""
    return dumps({"id": command_id, "status": "ok", "result": result}).encode()


def ack_error(command_id: str, error: str) -> bytes:
    """`{"id":...,"status":"error","error":"..."}` (the reason cut to MAX_ERROR_CHARS)."""
    return dumps({"id": command_id, "status": "error", "error": error[:MAX_ERROR_CHARS]}).encode()


def parse(payload: bytes) -> tuple[str | None, Any, Any, str | None]:
    """(id, name, params, problem) of a command payload; never raises.

    `id` is None when there is no usable id (the command cannot be acknowledged). `problem` is
    None for a well-formed command, else the reason to put in an error ack.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        return None, None, None, "command is larger than %d bytes" % MAX_COMMAND_BYTES
    try:
        data = json.loads(payload)
    except (ValueError, RuntimeError, MemoryError):
        # ValueError: bad JSON or bad UTF-8 (CPython's errors subclass it); RuntimeError: nesting
        # too deep (CPython's RecursionError); MemoryError: a MicroPython heap that ran out.
        return None, None, None, "command is not valid JSON"
    if not isinstance(data, dict):
        return None, None, None, "command must be a JSON object"
    command_id = data.get("id")
    if not isinstance(command_id, str) or not command_id or len(command_id) > MAX_ID_CHARS:
        return None, None, None, "command id must be a string of 1..%d characters" % MAX_ID_CHARS
    name = data.get("name")
    if not isinstance(name, str) or not name:
        return command_id, None, None, "command name must be a non-empty string"
    params = data.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return command_id, name, None, "params must be a JSON object"
    return command_id, name, params, None
