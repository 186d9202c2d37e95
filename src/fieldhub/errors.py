"""The domain's error tree: what went wrong, as a machine-readable `code` and a human message.

Domain code (commands, store, rules...) raises these and knows nothing of HTTP; `api/errors.py`
maps each kind to a status code in one table. The kinds are the few a caller can act on
differently: fix the request, look elsewhere, wait, or retry later.
"""

from __future__ import annotations


class FieldhubError(Exception):
    """Base of every error fieldhub reports to a caller. `code` is stable (clients match on it);
    `message` says what to do next."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class Invalid(FieldhubError):
    """The request is well-formed but wrong (unknown command, bad parameter, past expiry)."""

    code = "invalid_parameter"


class NotFound(FieldhubError):
    """The thing asked for does not exist."""

    code = "not_found"


class Conflict(FieldhubError):
    """The request clashes with the current state (an id in use, a command already sent)."""

    code = "conflict"


class TooLarge(FieldhubError):
    """The request is over a size limit."""

    code = "payload_too_large"


class Overloaded(FieldhubError):
    """Too much at once (a rate limit, a full queue): retry after `retry_after_s`."""

    code = "rate_limited"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Unavailable(FieldhubError):
    """A part fieldhub depends on (the database, the broker) is not answering."""

    code = "unavailable"


class Unauthenticated(FieldhubError):
    """No credentials, or credentials that do not check (wrong password, unknown, expired or
    revoked token, ended session): authenticate and try again."""

    code = "unauthenticated"


class Forbidden(FieldhubError):
    """Authenticated, but not allowed: a role below the one the request needs, or a missing
    CSRF token. Another attempt with the same credentials gets the same answer."""

    code = "forbidden"


class Throttled(Overloaded):
    """Too many failed logins for a username or from an address: wait `retry_after_s`.

    An Overloaded, so it answers 429 with Retry-After like every other "too much at once"."""

    code = "throttled"
