"""The audit log: who did what, when, from where, with what outcome.

Each entry is appended to the store and written as one log line. Neither ever holds a secret:
`detail` is scrubbed here (values under secret-sounding keys are replaced, long strings cut), so
a caller that passes a command's params or a request body cannot leak a password through it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import orjson

from fieldhub.clock import SYSTEM_CLOCK, Clock
from fieldhub.store.base import Store
from fieldhub.store.types import AuditEntry, StoreError

log = logging.getLogger("fieldhub.audit")

Outcome = str  # "ok" | "denied" | "failed"

# Keys whose values are never kept: passwords, secrets, tokens (but token_id, the public part),
# hashes, cookies, keys. Matched anywhere in the key, case-insensitively.
_SECRET_KEY = re.compile(
    r"pass|secret|token(?!_id)|hash|cookie|credential|authori[sz]ation|api_?key|private|psk",
    re.IGNORECASE,
)
REDACTED = "[redacted]"
MAX_STRING_CHARS = 200
# JSON integers beyond 64 bits are refused by orjson and by PostgreSQL's jsonb: kept as text.
_INT64 = range(-(2**63), 2**63)
MAX_ITEMS = 50
MAX_DEPTH = 4


def scrub(detail: Mapping[str, object]) -> dict[str, object]:
    """`detail` fit for the audit log: secret-sounding keys redacted, strings and lists cut."""
    return _scrub_mapping(detail, 0)


def _scrub_mapping(value: Mapping[str, object], depth: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for i, (key, item) in enumerate(value.items()):
        if i >= MAX_ITEMS:
            out["..."] = f"{len(value) - MAX_ITEMS} more"
            break
        name = _text(str(key)[:MAX_STRING_CHARS])
        out[name] = REDACTED if _SECRET_KEY.search(name) else _scrub_value(item, depth + 1)
    return out


def _scrub_value(value: object, depth: int) -> object:
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if value in _INT64 else str(value)
    if isinstance(value, str):
        text = _text(value)
        return text if len(text) <= MAX_STRING_CHARS else text[:MAX_STRING_CHARS] + "..."
    if depth >= MAX_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        return _scrub_mapping(value, depth)
    if isinstance(value, list | tuple):
        return [_scrub_value(v, depth + 1) for v in value[:MAX_ITEMS]]
    return _scrub_value(str(value), depth)


def _text(value: str) -> str:
    """`value` as valid UTF-8: a lone surrogate (JSON lets a client send one) becomes '?', so
    the entry can be encoded for the log and the store."""
    return value.encode("utf-8", "replace").decode("utf-8")


class Auditor:
    """Appends entries to the store's audit log and logs each one."""

    def __init__(self, store: Store, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.clock = clock

    async def record(
        self,
        actor: str,
        action: str,
        *,
        target: str | None = None,
        address: str | None = None,
        outcome: Outcome = "ok",
        detail: Mapping[str, object] | None = None,
    ) -> int | None:
        """Append an entry; its seq, or None when the store refused it (then it is logged as
        lost: the action it records has happened, so failing the request would only hide it)."""
        entry = AuditEntry(
            at_us=self.clock.now_us(),
            actor=actor,
            action=action,
            target=target,
            address=address,
            outcome=outcome,
            detail=scrub(detail or {}),
        )
        line = orjson.dumps(entry.detail).decode() if entry.detail else ""
        log.info(
            "audit %s actor=%s target=%s address=%s outcome=%s %s",
            action,
            actor,
            target or "-",
            address or "-",
            outcome,
            line,
        )
        try:
            return await self.store.append_audit(entry)
        except StoreError as exc:
            log.error("audit entry not stored (%s): %s by %s", exc, action, actor)
            return None
