"""Mosquitto's `$7$` password hashes (PBKDF2-HMAC-SHA512), made and checked with the stdlib.

A line of Mosquitto's password file is `username:$7$<iterations>$<base64 salt>$<base64 hash>`,
the format `mosquitto_passwd` writes (Mosquitto 2.0.11, apps/mosquitto_passwd and
src/security_default.c). `hashlib.pbkdf2_hmac` computes it: no cryptography of our own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

# mosquitto_passwd's default (PW_DEFAULT_ITERATIONS in 2.0.11). Every secret hashed here is
# random (device secrets, fieldhub's own clients' passwords, >= 128 bits), so the hash does not
# have to slow down guessing; it runs on the broker's single thread at every CONNECT, and
# measured with hashlib on this machine: 0.12 ms at 101 iterations, 80 ms at 100,000, so a fleet
# of 1,000 devices reconnecting after an outage would stall the broker for 80 s instead of 0.1 s.
PBKDF2_ITERATIONS = 101

# Mosquitto 2.0.11 drops a password file entry whose salt does not decode to exactly 12 bytes
# or whose hash is not 64 bytes (unpwd__decode_passwords), logging "removing entry".
SALT_BYTES = 12
HASH_BYTES = 64

# The whole `$7$` field as Mosquitto accepts it: standard base64 with padding, no ':' (the
# password file's separator) and no white space or newline, so it can never break a line.
_HASH_RE = re.compile(
    r"\$7\$(?P<iterations>[1-9][0-9]{0,8})\$(?P<salt>[A-Za-z0-9+/]{16})"
    r"\$(?P<hash>[A-Za-z0-9+/]{86}==)"
)


def _digest(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)


def _check_password_text(password: str) -> None:
    if not password:
        raise ValueError("a broker password must not be empty")
    if "\x00" in password:
        # Mosquitto reads the MQTT password as a C string: it would hash only what precedes
        # the NUL, so the stored hash could never match.
        raise ValueError("a broker password must not contain a NUL character")


def hash_password(
    password: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None
) -> str:
    """Return `$7$<iterations>$<salt>$<hash>` for `password` (a fresh random salt by default)."""
    _check_password_text(password)
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    if len(salt) != SALT_BYTES:
        raise ValueError(f"Mosquitto needs a {SALT_BYTES}-byte salt, got {len(salt)} bytes")
    digest = _digest(password, salt, iterations)
    salt64 = base64.b64encode(salt).decode()
    hash64 = base64.b64encode(digest).decode()
    return f"$7${iterations}${salt64}${hash64}"


def is_mosquitto_hash(encoded: str) -> bool:
    """True when `encoded` is a `$7$` hash Mosquitto 2.0.11 loads (and safe in its file)."""
    return _HASH_RE.fullmatch(encoded) is not None


def check_password(password: str, encoded: str) -> bool:
    """True when `password` matches the `$7$` hash `encoded` (constant-time comparison).

    A malformed `encoded` is a ValueError, not a mismatch: it is a bug or a corrupt row.
    """
    match = _HASH_RE.fullmatch(encoded)
    if match is None:
        raise ValueError("not a Mosquitto $7$ password hash")
    try:
        salt = base64.b64decode(match["salt"], validate=True)
        expected = base64.b64decode(match["hash"], validate=True)
    except binascii.Error as exc:  # pragma: no cover - the pattern admits only valid base64
        raise ValueError("not a Mosquitto $7$ password hash") from exc
    if not password or "\x00" in password:
        return False
    actual = _digest(password, salt, int(match["iterations"]))
    return hmac.compare_digest(actual, expected)
