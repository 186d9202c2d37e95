"""E-mail: a plain-text message per notification over SMTP (optionally STARTTLS and a login).

smtplib is blocking, so each attempt runs in a thread (`asyncio.to_thread`) with a socket
timeout; the event loop never waits on a mail server. One connection per message: alarms are
few (digests see to that), and a fresh session never inherits a half-broken one.

What is retried: connection errors, timeouts, a server that hangs up, and 4xx replies (SMTP's
"try again later"). What fails at once: 5xx replies (a refused recipient, a failed login), a
server without STARTTLS when it is required, a certificate that does not verify.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses
from typing import Literal

from fieldhub.clock import US_PER_S
from fieldhub.notify.message import Attempt, Kind, Notification, scrub_text

TIMEOUT_S = 10.0
MAX_ERROR_CHARS = 200
# Lines of a digest's body beyond which items are only counted.
MAX_BODY_ITEMS = 500


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Where and how to send: `starttls` upgrades the connection before any login (with the
    system's CAs, or only `ca_file`'s); `username` None sends without logging in."""

    host: str
    port: int
    from_addr: str
    starttls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = TIMEOUT_S
    # The name this host gives in EHLO (None: smtplib's default, the local FQDN).
    local_hostname: str | None = None


def recipients(target: str) -> list[str]:
    """The addresses in an e-mail notification's target (`a@x, B <b@y>`)."""
    return [address for _name, address in getaddresses([target]) if address]


def message_id(key: str) -> str:
    """The Message-ID for an idempotency key: the same on every retry, so a mail system or a
    reader can tell a duplicate."""
    safe = "".join(c if c.isalnum() or c in "-._" else "-" for c in key)[:200]
    return f"<{safe}@fieldhub>"


def render_body(notification: Notification) -> str:
    """The plain-text body: the payload's fields one per line, or a digest's items."""
    payload = notification.payload
    digest = payload.get("digest")
    lines: list[str] = []
    if isinstance(digest, Mapping):
        items = payload.get("items")
        item_list = items if isinstance(items, list) else []
        count = digest.get("count", len(item_list))
        lines.append(
            f"{count} notifications of {digest.get('group')} within "
            f"{digest.get('window_s')} s, listed below."
        )
        lines.append("")
        for item in item_list[:MAX_BODY_ITEMS]:
            if not isinstance(item, Mapping):
                continue
            lines.append(f"- {item.get('subject', '')}")
            details = item.get("payload")
            if isinstance(details, Mapping):
                lines.extend(f"    {key}: {_text(value)}" for key, value in details.items())
        shown = min(len(item_list), MAX_BODY_ITEMS)
        if isinstance(count, int) and count > shown:
            lines.append(f"... and {count - shown} more")
    else:
        lines.append(notification.subject)
        lines.append("")
        lines.extend(f"{key}: {_text(value)}" for key, value in payload.items())
    lines.append("")
    lines.append(f"-- fieldhub notification {notification.key}")
    return "\n".join(lines) + "\n"


def _text(value: object) -> str:
    return (
        value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    )


def build_message(settings: SmtpSettings, notification: Notification) -> EmailMessage:
    """The e-mail for `notification`."""
    message = EmailMessage()
    message["From"] = settings.from_addr
    message["To"] = ", ".join(recipients(notification.target))
    message["Subject"] = notification.subject
    message["Date"] = format_datetime(
        datetime.fromtimestamp(notification.created_us / US_PER_S, tz=UTC)
    )
    message["Message-ID"] = message_id(notification.key)
    message["X-Fieldhub-Delivery"] = notification.key
    message.set_content(render_body(notification))
    return message


class EmailSender:
    """Sends each notification as one e-mail through `settings`' SMTP server."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    @property
    def kind(self) -> Kind:
        return "email"

    async def aclose(self) -> None:
        """Nothing held between messages."""

    async def attempt(self, notification: Notification) -> Attempt:
        """Send once, in a thread; classify the outcome."""
        to = recipients(notification.target)
        if not to:
            return Attempt("failed", error="no recipient address in the target")
        try:
            message = build_message(self.settings, notification)
        except (ValueError, TypeError) as exc:
            return Attempt("failed", error=self._error(exc))
        try:
            await asyncio.to_thread(self._send, message, to)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _reply in exc.recipients.values()]
            verdict: Literal["retry", "failed"] = (
                "retry" if codes and all(400 <= code < 500 for code in codes) else "failed"
            )
            status = codes[0] if codes else None
            return Attempt(
                verdict,
                status=status,
                error="recipients refused: "
                + ", ".join(
                    f"{address} {code}" for address, (code, _reply) in exc.recipients.items()
                ),
            )
        except smtplib.SMTPResponseException as exc:
            again: Literal["retry", "failed"] = "retry" if 400 <= exc.smtp_code < 500 else "failed"
            return Attempt(again, status=exc.smtp_code, error=self._error(exc))
        except smtplib.SMTPNotSupportedError as exc:
            return Attempt("failed", error=self._error(exc))
        except ssl.SSLCertVerificationError as exc:
            return Attempt("failed", error=self._error(exc))
        except (smtplib.SMTPException, OSError) as exc:
            # Refused, reset, timed out, hung up: the server may come back.
            return Attempt("retry", error=self._error(exc))
        return Attempt("delivered", status=250)

    def _send(self, message: EmailMessage, to: list[str]) -> None:
        s = self.settings
        with smtplib.SMTP(
            s.host, s.port, timeout=s.timeout_s, local_hostname=s.local_hostname
        ) as smtp:
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context(cafile=s.ca_file))
            if s.username is not None:
                smtp.login(s.username, s.password or "")
            smtp.send_message(message, from_addr=s.from_addr, to_addrs=to)

    def _error(self, exc: BaseException) -> str:
        """An exception as delivery-log text, the password scrubbed (a server may echo it)."""
        text = f"{type(exc).__name__}: {exc}"
        return scrub_text(text, (self.settings.password,))[:MAX_ERROR_CHARS]
