"""User passwords: Argon2id through argon2-cffi (its defaults), and what is refused as one.

Hashing is deliberately slow and memory-hungry (64 MiB per hash with the defaults): callers on
the event loop run these in a thread (`AuthService` does, a few at a time).
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from fieldhub.errors import Invalid

MIN_PASSWORD_CHARS = 10
# Long enough for any passphrase; a longer "password" is an attempt to make hashing costly.
MAX_PASSWORD_CHARS = 1024

# Placeholders people leave in config files and docs; refused whatever their length. Compared
# lower-cased, so "Change-Me" is caught too. Short ones are also under MIN_PASSWORD_CHARS; they
# are listed so the message names the real problem.
PLACEHOLDERS = frozenset(
    {
        "admin",
        "administrator",
        "adminadmin",
        "change-me",
        "change_me",
        "changeme",
        "changeme123",
        "changethis",
        "default",
        "fieldhub",
        "fieldhub123",
        "letmein",
        "passw0rd",
        "password",
        "password1",
        "password123",
        "secret",
        "1234567890",
        "0123456789",
        "qwertyuiop",
        "your-password",
        "yourpassword",
    }
)

_hasher = PasswordHasher()


class WeakPassword(Invalid):
    """A password refused before hashing (empty, short, a placeholder)."""

    code = "weak_password"


def check_password(password: str, *, username: str | None = None) -> None:
    """Refuse an empty, short, overlong or placeholder password, or the username itself.

    The message never repeats the password (it may be one the user uses elsewhere)."""
    if not password or not password.strip():
        raise WeakPassword("the password is empty")
    if len(password) < MIN_PASSWORD_CHARS:
        raise WeakPassword(f"the password is shorter than {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise WeakPassword(f"the password is longer than {MAX_PASSWORD_CHARS} characters")
    lowered = password.strip().lower()
    if lowered in PLACEHOLDERS:
        raise WeakPassword("the password is a well-known placeholder; choose a real one")
    if username is not None and lowered == username.strip().lower():
        raise WeakPassword("the password is the username")


def hash_password(password: str, *, username: str | None = None) -> str:
    """The Argon2id encoded hash of an acceptable password (`check_password` first)."""
    check_password(password, username=username)
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether `password` matches `password_hash`; False too for a hash that is not one."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than today's (rehash on next login)."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


# Verified against when the username is unknown or disabled, so the answer takes as long as for a
# wrong password and timing does not tell which usernames exist.
DUMMY_HASH = _hasher.hash("fieldhub-no-such-user-placeholder")
