"""The first admin's one-time setup token.

On a first start with authentication on and no users, fieldhub makes a random token and prints
a link with it (`/setup?token=...`); whoever opens it creates the first admin, once. Only the
token's hash is kept for checking; the plain value is kept in memory for the start-up message
until the setup is done, and never written to the store or the log.
"""

from __future__ import annotations

import secrets

from fieldhub.security.tokens import hash_secret, secret_matches

SETUP_TOKEN_BYTES = 32


class SetupToken:
    """At most one pending setup token."""

    def __init__(self) -> None:
        self._hash: str | None = None
        self._plain: str | None = None

    @property
    def pending(self) -> bool:
        """Whether a token was issued and not yet used."""
        return self._hash is not None

    @property
    def value(self) -> str | None:
        """The pending token, for the start-up message; None once used (or never issued)."""
        return self._plain

    def issue(self) -> str:
        """A new token (replacing any pending one)."""
        token = secrets.token_urlsafe(SETUP_TOKEN_BYTES)
        self._hash = hash_secret(token)
        self._plain = token
        return token

    def matches(self, candidate: str) -> bool:
        """Whether `candidate` is the pending token (constant time)."""
        return self._hash is not None and bool(candidate) and secret_matches(candidate, self._hash)

    def consume(self) -> None:
        """Forget the token: it was used, or setup is no longer needed."""
        self._hash = None
        self._plain = None
