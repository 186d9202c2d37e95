"""Opaque pagination cursors: base64url of a small JSON list."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from fieldhub.errors import Invalid


def encode_cursor(*parts: Any) -> str:
    """A cursor for the page after the row described by `parts`."""
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


def decode_cursor(cursor: str, *types: type) -> list[Any]:
    """The parts of a cursor, checked against `types`; 422 when it was not made by us."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        parts = None
    if (
        not isinstance(parts, list)
        or len(parts) != len(types)
        or not all(
            isinstance(p, t) and not isinstance(p, bool) for p, t in zip(parts, types, strict=True)
        )
    ):
        raise Invalid("cursor is not valid: pass next_cursor from a previous page unchanged")
    return parts
