"""API tokens and session cookie values: generated, parsed, hashed, compared.

API token: `fh_<token_id>_<secret>`, token_id 12 hex characters (public: lists and the audit
log name a token by it), secret 32 random bytes (`secrets.token_urlsafe`). Stored is the sha256
hex of the whole token: the secret has 256 bits of entropy, so a fast hash is safe (nothing to
brute-force) and lets every request check its token without Argon2's cost. Session cookies are
the same idea: a random value, stored as its sha256.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

TOKEN_PREFIX = "fh_"
TOKEN_ID_HEX = 12
SECRET_BYTES = 32
# token_urlsafe(32) is 43 characters; anything much shorter or longer was not made here.
_TOKEN = re.compile(r"^fh_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def new_api_token() -> tuple[str, str]:
    """A fresh (token_id, whole token)."""
    token_id = secrets.token_hex(TOKEN_ID_HEX // 2)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


def token_id_of(token: str) -> str | None:
    """The token_id of a well-formed API token, None for anything else."""
    match = _TOKEN.match(token)
    return match.group(1) if match else None


def hash_secret(value: str) -> str:
    """sha256 hex of a high-entropy secret (an API token, a session cookie value)."""
    return hashlib.sha256(value.encode()).hexdigest()


def secret_matches(value: str, stored_hash: str) -> bool:
    """Whether `value` hashes to `stored_hash`, compared in constant time."""
    return hmac.compare_digest(hash_secret(value), stored_hash)


def new_session_value() -> str:
    """A session cookie value: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(SECRET_BYTES)


def new_csrf_token() -> str:
    """A session's CSRF token."""
    return secrets.token_urlsafe(SECRET_BYTES)


def same_secret(given: str | None, expected: str | None) -> bool:
    """Constant-time equality of two secrets; False when either is missing or empty."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
