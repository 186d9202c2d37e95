"""What is sent and what happened to it: the `Notification` value and its `Delivery` records.

A notification carries no secret: a webhook names the environment variable that holds its
signing secret (`secret_env`), and the sender reads it at send time. So a notification can be
queued, logged or stored as it is, and a `Delivery` (one per attempt, handed to the delivery-log
callback) holds a status code or an error text, never a secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

Kind = Literal["webhook", "email"]
KINDS: tuple[Kind, ...] = ("webhook", "email")

Outcome = Literal["delivered", "retrying", "failed", "dropped"]


@dataclass(frozen=True, slots=True)
class Notification:
    """One message to one target.

    `target` is the webhook's URL, or for e-mail the recipients (one address, or several
    separated by commas, as in a To header). `key` is the idempotency key: the same for every
    attempt (a webhook's `X-Fieldhub-Delivery` header, an e-mail's Message-ID), so a receiver
    can drop a duplicate. `group` (e.g. the rule's id) makes the notification digestible: those of
    one group to one target within the dispatcher's window become one digest message.
    """

    kind: Kind
    target: str
    subject: str
    payload: Mapping[str, object]
    key: str
    created_us: int
    group: str | None = None
    # The name of the environment variable holding a webhook's HMAC secret (None: unsigned).
    secret_env: str | None = None

    @property
    def is_digest(self) -> bool:
        """True for a digest the dispatcher made of several notifications."""
        return isinstance(self.payload.get("digest"), Mapping)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt's outcome (or a drop), for the delivery log.

    `outcome`: delivered; retrying (this attempt failed, another follows in `retry_in_s`);
    failed (no more attempts: a permanent refusal or the last attempt); dropped (never
    attempted: a full queue, or the dispatcher stopped). `target` is shown without the URL's
    user info and query (where tokens hide); `error` never holds a secret.
    """

    key: str
    kind: Kind
    target: str
    attempt: int
    outcome: Outcome
    at_us: int
    status: int | None = None
    error: str | None = None
    retry_in_s: float | None = None
    group: str | None = None


DeliveryLog = Callable[[Delivery], None]


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one send attempt came to: delivered, retry (a transient failure) or failed."""

    verdict: Literal["delivered", "retry", "failed"]
    status: int | None = None
    error: str | None = None
    # A server's Retry-After, seconds (honoured within the retry policy's cap).
    retry_after_s: float | None = field(default=None)


def shown_target(notification: Notification) -> str:
    """The target as logs and delivery records show it (see `redact_url`)."""
    if notification.kind == "webhook":
        return redact_url(notification.target)
    return notification.target


def redact_url(url: str) -> str:
    """`url` without user info or query: `https://user:pw@h/x?token=t` -> `https://h/x?...`."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "(invalid URL)"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "..." if parts.query else "", ""))


def scrub_text(text: str, secrets: tuple[str | None, ...]) -> str:
    """`text` with every occurrence of a secret replaced (errors can echo what was sent)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def digest_key(group: str, keys: list[str]) -> str:
    """A digest's idempotency key: the same for the same notifications in the same order."""
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]
    return f"digest-{group}-{digest}"
