"""Device ids: the id segment of a topic, with MAC addresses canonicalised.

One device must stay one device whichever profile or spelling it uses: `3c-e9-0e-72-12-4c`,
`3CE90E72124C` and `3ce9.0e72.124c` all become `3C:E9:0E:72:12:4C`. Any other id is kept as the
device wrote it (case included) once it passes validation.
"""

from __future__ import annotations

import re

# Long enough for a UUID, a hostname or `tenant.site.node-042`; short enough to index cheaply.
MAX_DEVICE_ID_CHARS = 128

# Matched with fullmatch: `$` would also match before a final newline, and `node\n` is no id.
_MAC_SEPARATED = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
_MAC_BARE = re.compile(r"[0-9A-Fa-f]{12}")
_MAC_DOTTED = re.compile(r"[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}")
# Printable ASCII without MQTT wildcards, topic separators, quotes or whitespace: the id travels in
# topics, URLs and log lines.
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:@~-]+")
# The same rule as a JSON-schema pattern, so the OpenAPI document states it.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.:@~-]+$"


class InvalidDeviceId(ValueError):
    """The id segment cannot name a device; the message says why."""


def is_mac(raw: str) -> bool:
    """True when `raw` is a MAC address in one of the accepted spellings."""
    return bool(
        _MAC_SEPARATED.fullmatch(raw) or _MAC_BARE.fullmatch(raw) or _MAC_DOTTED.fullmatch(raw)
    )


def canonical_device_id(raw: str) -> str:
    """Return the canonical id for `raw`, or raise InvalidDeviceId.

    A bare string of 12 hex digits is read as a MAC: ESP32 firmwares commonly print the MAC that way
    and a 12-hex-digit id that is not a MAC is rare enough to accept the ambiguity.
    """
    if is_mac(raw):
        digits = re.sub(r"[^0-9A-Fa-f]", "", raw).upper()
        return ":".join(digits[i : i + 2] for i in range(0, 12, 2))
    if not raw:
        raise InvalidDeviceId("device id is empty")
    if len(raw) > MAX_DEVICE_ID_CHARS:
        raise InvalidDeviceId(
            f"device id is {len(raw)} characters long, the limit is {MAX_DEVICE_ID_CHARS}"
        )
    if not _PLAIN_ID.fullmatch(raw):
        raise InvalidDeviceId(
            f"device id {raw!r} has characters outside letters, digits and _ . : @ ~ -"
        )
    return raw
