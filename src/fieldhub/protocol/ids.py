"""Device ids: the id segment of a topic, with MAC addresses canonicalised.

One device must stay one device whichever profile or spelling it uses: `3c-e9-0e-72-12-4c`,
`3CE90E72124C` and `3ce9.0e72.124c` all become `3C:E9:0E:72:12:4C`. Any other id is kept as the
device wrote it (case included) once it passes validation.

What an id may be, the same for every profile, the REST API and the CLI (docs/protocol.md):
1 to `MAX_DEVICE_ID_CHARS` characters from `A-Z a-z 0-9 _ . : @ ~ -`, and not made of dots
alone. That leaves out control characters, white space, `/` (a topic level), `+` and `#` (MQTT
wildcards), and `.`/`..`, which URLs and file paths resolve away (`/api/v1/devices/..` would name
the collection, not a device).
"""

from __future__ import annotations

import re

# Long enough for a UUID, a hostname or `tenant.site.node-042`, five times the longest id the
# four stacks use (`ESP32-3C:E9:0E:72:12:4C`, the FastAPI stack's client id, 23 characters);
# short enough to index cheaply.
MAX_DEVICE_ID_CHARS = 128

# Matched with fullmatch: `$` would also match before a final newline, and `node\n` is no id.
_MAC_SEPARATED = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
_MAC_BARE = re.compile(r"[0-9A-Fa-f]{12}")
_MAC_DOTTED = re.compile(r"[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}")
# Printable ASCII without MQTT wildcards, topic separators, quotes or whitespace: the id travels in
# topics, URLs and log lines.
_ID_CHARACTERS = "A-Za-z0-9_.:@~-"
_PLAIN_ID = re.compile(f"[{_ID_CHARACTERS}]+")
_OUTSIDE = re.compile(f"[^{_ID_CHARACTERS}]")
# The same rules as a JSON-schema pattern, so the OpenAPI document states them: at least one
# character that is not a dot (a lookahead would say it shorter, but pydantic's regex engine
# has none).
DEVICE_ID_PATTERN = rf"^[{_ID_CHARACTERS}]*[{_ID_CHARACTERS.replace('.', '')}][{_ID_CHARACTERS}]*$"


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
        raise InvalidDeviceId(_why_not(raw))
    if not raw.strip("."):
        raise InvalidDeviceId(
            f"device id {raw!r} is only dots: . and .. mean 'here' and 'up one level' in URLs "
            "and file paths"
        )
    return raw


def _why_not(raw: str) -> str:
    """Which character rule `raw` breaks, naming its first offending character."""
    found = _OUTSIDE.search(raw)
    assert found is not None  # only called for an id the character class refused
    char, at = found.group(), found.start()
    if char in "+#":
        rule = "an MQTT wildcard"
    elif char == "/":
        rule = "a topic level separator"
    elif not char.isprintable():
        rule = "a control character"
    elif char.isspace():
        rule = "white space"
    else:
        rule = "outside letters, digits and _ . : @ ~ -"
    return f"device id {raw!r} has {char!r} at position {at}: {rule}"
