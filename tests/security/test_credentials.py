"""Passwords, API tokens, the login throttle, audit scrubbing and Origin matching: the pure
parts of fieldhub.security and api/auth.py."""

from __future__ import annotations

import orjson
import pytest

from fieldhub.api.auth import normalize_origin, origin_allowed
from fieldhub.security import passwords, tokens
from fieldhub.security.audit import REDACTED, scrub
from fieldhub.security.roles import Role, at_least, parse_role
from fieldhub.security.throttle import LoginThrottle


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.at_least(Role.OPERATOR)
    assert Role.OPERATOR.at_least(Role.VIEWER)
    assert at_least(Role.VIEWER, Role.VIEWER)
    assert not Role.VIEWER.at_least(Role.OPERATOR)
    assert not at_least(Role.OPERATOR, Role.ADMIN)
    assert parse_role("operator") is Role.OPERATOR
    with pytest.raises(passwords.Invalid, match="unknown role"):
        parse_role("root")


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("", "empty"),
        ("          ", "empty"),
        ("short1", "shorter than 10"),
        ("admin", "shorter than 10"),
        ("change-me", "shorter than 10"),
        ("Password123", "placeholder"),
        ("CHANGEME123", "placeholder"),
        ("1234567890", "placeholder"),
        ("x" * 1025, "longer than"),
    ],
)
def test_weak_passwords_are_refused_without_repeating_them(password: str, why: str) -> None:
    with pytest.raises(passwords.WeakPassword, match=why) as caught:
        passwords.hash_password(password)
    if password.strip():
        assert password not in caught.value.message


def test_password_may_not_be_the_username() -> None:
    with pytest.raises(passwords.WeakPassword, match="username"):
        passwords.check_password("operator-bob", username="Operator-Bob")


def test_password_hash_verifies_and_is_argon2id() -> None:
    hashed = passwords.hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in hashed
    assert passwords.verify_password(hashed, "correct horse battery")
    assert not passwords.verify_password(hashed, "correct horse battery!")
    assert not passwords.verify_password("not a hash", "correct horse battery")
    assert not passwords.needs_rehash(hashed)
    assert passwords.needs_rehash("not a hash")


def test_api_tokens_parse_hash_and_compare() -> None:
    token_id, token = tokens.new_api_token()
    assert token.startswith(f"fh_{token_id}_")
    assert len(token_id) == 12
    assert int(token_id, 16) >= 0
    assert tokens.token_id_of(token) == token_id
    stored = tokens.hash_secret(token)
    assert len(stored) == 64
    assert token not in stored
    assert tokens.secret_matches(token, stored)
    assert not tokens.secret_matches(token + "x", stored)
    other_id, other = tokens.new_api_token()
    assert other_id != token_id
    assert other != token
    for malformed in (
        "",
        "fh_",
        f"fh_{token_id}",
        f"fh_{token_id.upper()}_{'a' * 43}",
        f"gh_{token_id}_{'a' * 43}",
        f"fh_{token_id}_{'a' * 42}",
        token + "a",
    ):
        assert tokens.token_id_of(malformed) is None, malformed


def test_same_secret_refuses_missing_values() -> None:
    assert tokens.same_secret("abc", "abc")
    assert not tokens.same_secret("abc", "abd")
    assert not tokens.same_secret(None, "abc")
    assert not tokens.same_secret("", "")
    assert not tokens.same_secret("abc", None)


def test_throttle_locks_after_five_failures_doubling_up_to_fifteen_minutes() -> None:
    throttle = LoginThrottle()
    keys = throttle.keys_for("Alice", "10.0.0.1")
    now = 1000.0
    for _ in range(4):
        assert throttle.retry_after_s(keys, now) is None
        throttle.failed(keys, now)
    assert throttle.retry_after_s(keys, now) is None
    throttle.failed(keys, now)  # the fifth
    assert throttle.retry_after_s(keys, now) == 15
    # The same username from elsewhere, and another username from the same address: locked.
    assert throttle.retry_after_s(throttle.keys_for("alice", "10.0.0.2"), now) == 15
    assert throttle.retry_after_s(throttle.keys_for("bob", "10.0.0.1"), now) == 15
    assert throttle.retry_after_s(throttle.keys_for("bob", "10.0.0.2"), now) is None
    locks = [15]
    for _ in range(8):
        now += locks[-1]
        assert throttle.retry_after_s(keys, now) is None
        throttle.failed(keys, now)
        locks.append(throttle.retry_after_s(keys, now) or 0)
    assert locks == [15, 30, 60, 120, 240, 480, 900, 900, 900]
    # A quarter of an hour after the last lock ended, the keys are forgotten.
    now += 900 + 900
    assert throttle.retry_after_s(keys, now) is None
    throttle.failed(keys, now)
    assert throttle.retry_after_s(keys, now) is None


def test_throttle_success_clears_the_username_not_the_address() -> None:
    throttle = LoginThrottle()
    for _ in range(4):
        throttle.failed(throttle.keys_for("alice", "10.0.0.1"), 0.0)
    throttle.succeeded("alice")
    throttle.failed(throttle.keys_for("alice", "10.0.0.9"), 0.0)
    assert throttle.retry_after_s(throttle.keys_for("alice", "10.0.0.9"), 0.0) is None
    throttle.failed(throttle.keys_for("mallory", "10.0.0.1"), 0.0)  # the address's fifth
    assert throttle.retry_after_s(throttle.keys_for("carol", "10.0.0.1"), 0.0) == 15


def test_throttle_state_is_bounded() -> None:
    throttle = LoginThrottle(max_keys=100)
    for i in range(1000):
        throttle.failed(throttle.keys_for(f"user{i}", f"10.0.{i // 256}.{i % 256}"), 0.0)
    assert len(throttle) == 100


def test_audit_detail_is_always_encodable() -> None:
    """What a client may put in a command's params: huge integers, lone surrogates."""
    detail = scrub({"n": -(2**70), "ok": 2**62, "\udb94k": "a\ud800b", "f": 1.5})
    assert detail == {"n": str(-(2**70)), "ok": 2**62, "?k": "a?b", "f": 1.5}
    orjson.dumps(detail)


def test_audit_detail_never_keeps_a_secret() -> None:
    detail = scrub(
        {
            "name": "set_wifi",
            "params": {"ssid": "lab", "password": "hunter2-hunter2", "wifi_psk": "abc"},
            "token": "fh_0123456789ab_secret",
            "token_id": "0123456789ab",
            "Authorization": "Bearer x",
            "api_key": "k",
            "nested": [{"client_secret": "s"}],
            "long": "x" * 1000,
        }
    )
    text = repr(detail)
    for secret in ("hunter2", "fh_0123456789ab_secret", "Bearer x", "'k'", "'s'", "'abc'"):
        assert secret not in text
    assert detail["token_id"] == "0123456789ab"
    assert detail["token"] == REDACTED
    assert detail["params"] == {"ssid": "lab", "password": REDACTED, "wifi_psk": REDACTED}
    assert len(str(detail["long"])) < 300


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", (), True),
        ("http://LOCALHOST:8000", "localhost:8000", (), True),
        ("https://hub.lan", "hub.lan:443", (), True),
        ("http://hub.lan:80", "hub.lan", (), True),
        ("http://evil.example", "127.0.0.1:8000", (), False),
        ("http://127.0.0.1:8001", "127.0.0.1:8000", (), False),
        ("http://127.0.0.1.evil.example:8000", "127.0.0.1:8000", (), False),
        ("null", "127.0.0.1:8000", (), False),
        ("file://", "127.0.0.1:8000", (), False),
        ("http://grafana.lan:3000", "hub.lan:8000", ("http://grafana.lan:3000",), True),
        ("http://grafana.lan:3000/", "hub.lan:8000", ("HTTP://Grafana.lan:3000",), True),
        ("http://grafana.lan:3001", "hub.lan:8000", ("http://grafana.lan:3000",), False),
        ("http://127.0.0.1:8000", None, (), False),
    ],
)
def test_websocket_origins(
    origin: str, host: str | None, allowed: tuple[str, ...], ok: bool
) -> None:
    assert origin_allowed(origin, host, allowed) is ok


def test_normalize_origin() -> None:
    assert normalize_origin("https://Hub.LAN:443") == "https://hub.lan"
    assert normalize_origin("http://hub.lan:8000/") == "http://hub.lan:8000"
    assert normalize_origin("http://hub.lan:8000/path") is None
    assert normalize_origin("http://hub.lan:99999") is None
