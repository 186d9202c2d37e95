"""Webhooks: a signed JSON POST per notification, and the check a receiver makes.

The body is the notification as JSON (`key`, `subject`, `created_us`, `group`, `payload`).
`X-Fieldhub-Timestamp` is the attempt's time in epoch seconds and `X-Fieldhub-Signature`
`sha256=` + the hex HMAC-SHA256, keyed with the target's secret, of `timestamp + "." + body`:
signing the timestamp with the body lets a receiver refuse a replayed request
(`verify_signature`'s tolerance). `X-Fieldhub-Delivery` is the idempotency key, the same on every
retry. 2xx is delivered; 408, 429, 5xx and connection errors are retried; any other status
(4xx, and 3xx: redirects are not followed, a signed body is not re-sent elsewhere) fails at once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import httpx
import orjson

from fieldhub.clock import SYSTEM_CLOCK, US_PER_S, Clock
from fieldhub.notify.message import Attempt, Kind, Notification, redact_url, scrub_text

SIGNATURE_HEADER = "X-Fieldhub-Signature"
TIMESTAMP_HEADER = "X-Fieldhub-Timestamp"
DELIVERY_HEADER = "X-Fieldhub-Delivery"
TIMEOUT_S = 5.0
# How far a receiver lets a signed timestamp be from its own clock (replay window).
DEFAULT_TOLERANCE_S = 300
RETRY_STATUSES = frozenset({408, 429})
# A status's reason phrase, cut: enough to tell a 503 from a 500 in the log.
MAX_ERROR_CHARS = 200

SecretLookup = Callable[[str], str | None]


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: `sha256=<hex HMAC-SHA256 of timestamp.body>`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    header: str,
    *,
    now_s: float | None = None,
    tolerance_s: float | None = DEFAULT_TOLERANCE_S,
) -> bool:
    """A receiver's check: `header` signs `timestamp.body` with `secret` (compared in constant
    time) and, unless `tolerance_s` is None, `timestamp` is within it of `now_s` (default: now)."""
    if tolerance_s is not None:
        try:
            sent_s = int(timestamp)
        except ValueError:
            return False
        if abs((time.time() if now_s is None else now_s) - sent_s) > tolerance_s:
            return False
    # As bytes: compare_digest refuses a str with non-ASCII characters (a forged header may).
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), header.encode())


def body_of(notification: Notification) -> bytes:
    """The JSON body POSTed for `notification`."""
    return orjson.dumps(
        {
            "key": notification.key,
            "subject": notification.subject,
            "created_us": notification.created_us,
            "group": notification.group,
            "payload": notification.payload,
        }
    )


def retry_after_s(value: str | None, now_s: float) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now; None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_s)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class WebhookSender:
    """Sends webhooks with one shared `httpx.AsyncClient` (connections kept alive per host).

    `secrets` looks a notification's `secret_env` up (default: the environment); a named
    secret that is not set fails the notification at once (retrying cannot help), naming the
    variable, never a value.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient | None = None,
        secrets: SecretLookup = os.environ.get,
        clock: Clock = SYSTEM_CLOCK,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=timeout_s, follow_redirects=False, headers={"User-Agent": "fieldhub-notify"}
        )
        self._secrets = secrets
        self._clock = clock
        self._timeout = httpx.Timeout(timeout_s)

    @property
    def kind(self) -> Kind:
        return "webhook"

    async def aclose(self) -> None:
        """Close the HTTP client if this sender made it."""
        if self._own_client:
            await self._client.aclose()

    async def attempt(self, notification: Notification) -> Attempt:
        """POST once; classify the answer."""
        secret: str | None = None
        if notification.secret_env is not None:
            secret = self._secrets(notification.secret_env)
            if not secret:
                return Attempt("failed", error=f"secret {notification.secret_env} is not set")
        try:
            body = body_of(notification)
        except TypeError as exc:
            return Attempt("failed", error=f"payload is not JSON: {exc}")
        now_s = self._clock.now_us() // US_PER_S
        timestamp = str(now_s)
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            DELIVERY_HEADER: notification.key,
        }
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
        try:
            response = await self._client.post(
                notification.target, content=body, headers=headers, timeout=self._timeout
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
            # A URL no retry can mend (UnsupportedProtocol is a TransportError: caught first).
            return Attempt("failed", error=self._error(exc, notification, secret))
        except httpx.TransportError as exc:
            # Refused, reset, timed out, DNS: the host may come back.
            return Attempt("retry", error=self._error(exc, notification, secret))
        status = response.status_code
        if 200 <= status < 300:
            return Attempt("delivered", status=status)
        reason = response.reason_phrase[:MAX_ERROR_CHARS] or None
        if status in RETRY_STATUSES or status >= 500:
            after = retry_after_s(response.headers.get("Retry-After"), float(now_s))
            return Attempt("retry", status=status, error=reason, retry_after_s=after)
        return Attempt("failed", status=status, error=reason)

    @staticmethod
    def _error(exc: Exception, notification: Notification, secret: str | None) -> str:
        """An exception as delivery-log text: its kind and message, the URL shown redacted."""
        text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        text = text.replace(notification.target, redact_url(notification.target))
        return scrub_text(text, (secret,))[:MAX_ERROR_CHARS]
