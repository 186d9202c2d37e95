"""Rendering the broker's access files: pure, and refusing what could change a line's meaning."""

from __future__ import annotations

import re

import pytest

from fieldhub.broker import BrokerAccess, DeviceCredential, InternalClient, LegacyLogin, Role
from fieldhub.broker.access import (
    COMMANDS_WRITE,
    INGEST_READ,
    device_username,
    fastapi_firmware_login,
    id_spellings,
    render_acl_file,
    render_legacy_acl_file,
    render_legacy_password_file,
    render_password_file,
)
from fieldhub.broker.legacy import LEGACY_POLICIES, LegacyPolicy
from fieldhub.broker.passwd import hash_password
from fieldhub.commands.formats import FORMATS
from fieldhub.protocol.profiles import BUILTIN_PROFILES

HASH = hash_password("x")


def _matches(pattern: str, route: str) -> bool:
    """Whether an ACL filter (with %c as one level) covers a profile route's topics."""
    levels = pattern.replace("%c", "+").split("/")
    return levels == route.split("/")


def test_ingest_reads_every_profile_and_commands_write_every_format_topic() -> None:
    for profile in BUILTIN_PROFILES.values():
        assert set(profile.subscriptions) <= set(INGEST_READ)
    topics = {fmt.topic_pattern.replace("{id}", "+") for fmt in FORMATS.values()}
    topics |= {
        fmt.fallback_topic_pattern.replace("{id}", "+")
        for fmt in FORMATS.values()
        if fmt.fallback_topic_pattern
    }
    assert topics <= set(COMMANDS_WRITE)
    assert "devices/+/commands/ack" not in COMMANDS_WRITE


@pytest.mark.parametrize("policy", LEGACY_POLICIES.values(), ids=lambda p: p.name)
def test_each_legacy_topic_is_a_route_of_its_profile(policy: LegacyPolicy) -> None:
    profile = BUILTIN_PROFILES["native" if policy.name == "fastapi" else policy.name]
    routes = [route.pattern for route in profile.routes]
    for topic in (*policy.publish, *policy.read):
        assert any(_matches(topic, route) for route in routes), topic
        assert "#" not in topic
        assert "ack" not in topic
    # Devices publish only up-links; down-links (commands, window orders) are only read.
    down = {r.pattern for r in profile.routes if r.decoder == "ignore" or not r.from_device}
    for topic in policy.publish:
        assert not any(_matches(topic, route) for route in down), topic
    assert policy.can_spoof
    assert policy.cannot_spoof


def test_a_policy_cannot_grant_a_wildcard_or_an_ack() -> None:
    with pytest.raises(ValueError, match="too wide"):
        LegacyPolicy("x", "", "", ("a/#",), (), (), "", "")
    with pytest.raises(ValueError, match="ack"):
        LegacyPolicy("x", "", "", ("devices/%c/commands/ack",), (), (), "", "")


def test_main_files() -> None:
    access = BrokerAccess(
        internal=(
            InternalClient("fieldhub-ingest-0123456789abcdef", HASH, Role.INGEST),
            InternalClient("fieldhub-commands-0123456789abcdef", HASH, Role.COMMANDS),
        ),
        devices=(DeviceCredential("esp32-01", HASH), DeviceCredential("3C:E9:0E:72:12:4C", HASH)),
    )
    assert render_password_file(access).splitlines() == [
        f"fieldhub-ingest-0123456789abcdef:{HASH}",
        f"fieldhub-commands-0123456789abcdef:{HASH}",
        f"esp32-01:{HASH}",
        f"3CE90E72124C:{HASH}",
    ]
    acl = render_acl_file(access)
    assert "user esp32-01\ntopic write devices/esp32-01/telemetry\n" in acl
    assert "topic read devices/3CE90E72124C/commands" in acl
    assert "pattern" not in acl
    assert " # " not in acl
    assert not re.search(r"^topic (write|readwrite) .*#", acl, re.MULTILINE)


@pytest.mark.parametrize(
    "device_id", ["a b", "a\nuser x", "x#", "dev+1", "a/b", "", "3c:e9:0e:72:12:4c", "x" * 129]
)
def test_unsafe_or_non_canonical_device_ids_are_refused(device_id: str) -> None:
    access = BrokerAccess(devices=(DeviceCredential(device_id, HASH),))
    with pytest.raises(ValueError):  # noqa: PT011 - each id fails for its own reason
        render_password_file(access)
    with pytest.raises(ValueError):  # noqa: PT011
        render_acl_file(access)


@pytest.mark.parametrize("password_hash", ["secret", f"{HASH}\nuser evil", "$7$1$x$y"])
def test_hashes_that_are_not_mosquitto_ones_are_refused(password_hash: str) -> None:
    access = BrokerAccess(devices=(DeviceCredential("dev-a", password_hash),))
    with pytest.raises(ValueError, match="not a Mosquitto"):
        render_password_file(access)


def test_duplicate_usernames_are_refused() -> None:
    access = BrokerAccess(
        internal=(InternalClient("dev-a", HASH, Role.INGEST),),
        devices=(DeviceCredential("dev-a", HASH),),
    )
    with pytest.raises(ValueError, match="twice"):
        render_password_file(access)


def test_mac_usernames_and_spellings() -> None:
    assert device_username("3C:E9:0E:72:12:4C") == "3CE90E72124C"
    assert device_username("esp32-01") == "esp32-01"
    assert set(id_spellings("3C:E9:0E:72:12:4C")) == {
        "3C:E9:0E:72:12:4C",
        "3C-E9-0E-72-12-4C",
        "3CE9.0E72.124C",
        "3CE90E72124C",
        "3c:e9:0e:72:12:4c",
        "3c-e9-0e-72-12-4c",
        "3ce9.0e72.124c",
        "3ce90e72124c",
    }
    assert id_spellings("Node-1") == ("Node-1",)


def test_legacy_files_deny_credentialed_devices_before_any_grant() -> None:
    access = BrokerAccess(
        devices=(DeviceCredential("dev-a", HASH),),
        legacy=tuple(LEGACY_POLICIES.values()),
        legacy_logins=(fastapi_firmware_login(),),
    )
    acl = render_legacy_acl_file(access).splitlines()
    anonymous = acl[: acl.index("user rnr_iot_user")]
    fastapi = acl[acl.index("user rnr_iot_user") :]
    for section in (anonymous, fastapi):
        grants = [i for i, line in enumerate(section) if " write " in line or " read " in line]
        denies = [i for i, line in enumerate(section) if line.startswith("topic deny")]
        assert "topic deny devices/dev-a/#" in section
        assert "topic deny /readings/gateway/dev-a" in section
        assert max(denies) < min(grants)
    assert "topic write devices/+/data" in fastapi
    assert "topic write devices/+/data" not in anonymous  # FastAPI only with its login
    assert "pattern write /readings/gateway/%c" in acl
    assert not any(line.endswith("#") and " deny " not in line for line in acl)
    assert render_legacy_password_file(access).startswith("rnr_iot_user:$7$")


def test_a_policy_with_a_login_needs_it() -> None:
    access = BrokerAccess(legacy=(LEGACY_POLICIES["fastapi"],))
    with pytest.raises(ValueError, match="needs the login 'rnr_iot_user'"):
        render_legacy_acl_file(access)
    with pytest.raises(ValueError, match="username"):
        render_legacy_password_file(BrokerAccess(legacy_logins=(LegacyLogin("bad:name", HASH),)))
