"""Who may use the embedded broker, and the password and ACL files rendered from it.

`BrokerAccess` is a frozen value built from fieldhub's database (device credentials) and its
secrets file (its own clients); the render functions are pure text. The main and TLS listeners
share `render_password_file` and `render_acl_file`; the legacy listener (docs: legacy.py) gets
`render_legacy_password_file` and `render_legacy_acl_file`. Anything that could change the
meaning of a line of these files (a ':' in a username, white space, a malformed hash) is refused
with ValueError instead of being written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from fieldhub.broker.legacy import FASTAPI, FASTAPI_FIRMWARE_PASSWORD, LegacyPolicy
from fieldhub.broker.passwd import hash_password, is_mosquitto_hash
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id, is_mac
from fieldhub.protocol.profiles import BUILTIN_PROFILES


class Role(StrEnum):
    """What one of fieldhub's own MQTT clients may do."""

    INGEST = "ingest"  # read every profile's topics; publish nothing
    COMMANDS = "commands"  # publish every down-link topic; read nothing


# Every profile's subscriptions (`devices/#`, `/readings/#`, ...): ingest reads all of them,
# also through `$share/<group>/...` (Mosquitto checks a shared subscription's messages against
# the topic itself, src/security.c acl__check_dollar).
INGEST_READ: tuple[str, ...] = tuple(
    dict.fromkeys(f for profile in BUILTIN_PROFILES.values() for f in profile.subscriptions)
)

# Every topic fieldhub's command service publishes to (fieldhub/commands/formats.py: each
# format's topic and retained fallback topic, cleared with an empty retained message) plus the
# OTA down-link. tests/broker/test_access.py holds this list to the command formats.
COMMANDS_WRITE: tuple[str, ...] = (
    "devices/+/commands",
    "devices/+/commands/last",
    "devices/+/ota",
    "iot/node/+/command",
    "window/+/control",
    # The rules engine's MQTT actions: the window-control stack's inference trigger
    # (examples/rules/window-zscore-trigger.yaml). A rule's MQTT action to any other topic is
    # dropped by the broker (docs/rules.md).
    "ml/inference/request/+",
)

# What a device with fieldhub credentials may do, under its own id only (native profile).
DEVICE_WRITE_SUFFIXES = ("telemetry", "status", "commands/ack", "audio", "ota/status")
DEVICE_READ_SUFFIXES = ("commands", "ota")

# A username Mosquitto's files can hold as is: no ':' (the password file's separator), no white
# space (the ACL file's), no MQTT wildcard (pattern ACLs refuse such clients), no leading '#'
# (a comment). fieldhub's own client names are `fieldhub-<role>-<16 hex>`.
_SAFE_USERNAME = re.compile(r"[A-Za-z0-9_.@~-]{1,128}")


@dataclass(frozen=True, slots=True)
class InternalClient:
    """One of fieldhub's own MQTT clients: its username (= its client id) and password hash."""

    username: str
    password_hash: str
    role: Role


@dataclass(frozen=True, slots=True)
class DeviceCredential:
    """A device's fieldhub credentials: its canonical id and the hash of its secret."""

    device_id: str
    password_hash: str


@dataclass(frozen=True, slots=True)
class LegacyLogin:
    """A username and password hash a legacy stack's firmware logs in with (legacy listener)."""

    username: str
    password_hash: str


@dataclass(frozen=True, slots=True)
class BrokerAccess:
    """Everyone the broker lets in, and the legacy stacks it serves on the legacy listener."""

    internal: tuple[InternalClient, ...] = ()
    devices: tuple[DeviceCredential, ...] = ()
    legacy: tuple[LegacyPolicy, ...] = ()
    legacy_logins: tuple[LegacyLogin, ...] = ()


def device_username(device_id: str) -> str:
    """The MQTT username (and client id, and topic id) of a device with credentials.

    Its canonical id, except for a MAC address: Mosquitto's password file splits a line at the
    first ':' (pwfile__parse), so `3C:E9:0E:72:12:4C` logs in as `3CE90E72124C`, a spelling
    fieldhub reads as the same device (protocol/ids.py).
    """
    try:
        canonical = canonical_device_id(device_id)
    except InvalidDeviceId as exc:
        raise ValueError(str(exc)) from None
    if canonical != device_id:
        raise ValueError(f"device id {device_id!r} is not canonical (it is {canonical!r})")
    username = device_id.replace(":", "") if is_mac(device_id) else device_id
    if not _SAFE_USERNAME.fullmatch(username):
        raise ValueError(f"device id {device_id!r} cannot be a Mosquitto username")
    return username


def id_spellings(device_id: str) -> tuple[str, ...]:
    """The spellings of a device id the legacy ACL denies: for a MAC, upper and lower case
    with colons, dashes, dots and none (protocol/ids.py reads each as the same device);
    otherwise the id itself. Mixed-case MAC spellings are not listed (up to 4,096 per form)."""
    if not is_mac(device_id):
        return (device_id,)
    digits = device_id.replace(":", "")
    spellings: list[str] = []
    for text in (digits.upper(), digits.lower()):
        pairs = [text[i : i + 2] for i in range(0, 12, 2)]
        quads = [text[i : i + 4] for i in range(0, 12, 4)]
        spellings += [":".join(pairs), "-".join(pairs), ".".join(quads), text]
    return tuple(dict.fromkeys(spellings))


def _check_hash(who: str, password_hash: str) -> None:
    if not is_mosquitto_hash(password_hash):
        raise ValueError(f"{who}: the password hash is not a Mosquitto $7$ hash")


def _check_username(username: str) -> None:
    if not _SAFE_USERNAME.fullmatch(username):
        raise ValueError(
            f"username {username!r} cannot be written to Mosquitto's files "
            "(1-128 of letters, digits and _ . @ ~ -)"
        )


def _main_users(access: BrokerAccess) -> list[tuple[str, str]]:
    """(username, hash) of every main-listener user, validated, in file order."""
    users: list[tuple[str, str]] = []
    for client in access.internal:
        _check_username(client.username)
        _check_hash(client.username, client.password_hash)
        users.append((client.username, client.password_hash))
    for device in access.devices:
        username = device_username(device.device_id)
        _check_hash(device.device_id, device.password_hash)
        users.append((username, device.password_hash))
    seen: set[str] = set()
    for username, _hash in users:
        if username in seen:
            raise ValueError(f"username {username!r} is given twice")
        seen.add(username)
    return users


def render_password_file(access: BrokerAccess) -> str:
    """The main (and TLS) listener's password file: fieldhub's clients, then every device."""
    lines = [f"{username}:{password_hash}" for username, password_hash in _main_users(access)]
    return "".join(f"{line}\n" for line in lines)


def render_acl_file(access: BrokerAccess) -> str:
    """The main (and TLS) listener's ACL file: one `user` block per client.

    A client with no block (none here) may do nothing; nothing is granted by pattern, so no
    line of one user applies to another.
    """
    _main_users(access)
    lines = ["# Generated by fieldhub from its database: edits here are overwritten."]
    for client in access.internal:
        lines += ["", f"user {client.username}"]
        if client.role is Role.INGEST:
            lines += [f"topic read {topic}" for topic in INGEST_READ]
        elif client.role is Role.COMMANDS:
            lines += [f"topic write {topic}" for topic in COMMANDS_WRITE]
    for device in access.devices:
        username = device_username(device.device_id)
        lines += ["", f"user {username}"]
        lines += [f"topic write devices/{username}/{suffix}" for suffix in DEVICE_WRITE_SUFFIXES]
        lines += [f"topic read devices/{username}/{suffix}" for suffix in DEVICE_READ_SUFFIXES]
    return "\n".join(lines) + "\n"


def _checked_legacy_logins(access: BrokerAccess) -> dict[str, str]:
    logins: dict[str, str] = {}
    for login in access.legacy_logins:
        _check_username(login.username)
        _check_hash(login.username, login.password_hash)
        if login.username in logins:
            raise ValueError(f"legacy login {login.username!r} is given twice")
        logins[login.username] = login.password_hash
    for policy in access.legacy:
        if policy.login is not None and policy.login not in logins:
            raise ValueError(
                f"legacy policy {policy.name} needs the login {policy.login!r} its firmware uses"
            )
    return logins


def render_legacy_password_file(access: BrokerAccess) -> str:
    """The legacy listener's password file: only the legacy stacks' compiled-in logins.

    Always written, even empty: without a password file Mosquitto 2.0.11 accepts any username
    and password on an anonymous listener (measured), and such a client would skip the `topic`
    lines meant for anonymous clients. With one, a client is either anonymous or one of these.
    """
    return "".join(f"{u}:{h}\n" for u, h in _checked_legacy_logins(access).items())


def render_legacy_acl_file(access: BrokerAccess) -> str:
    """The legacy listener's ACL file.

    For each section (anonymous clients, then each legacy login): `deny` lines for every topic
    of a device with fieldhub credentials, then the grants. `%c`-bound grants are `pattern`
    lines, which apply to every client but come after the section's `deny` lines (the order
    Mosquitto evaluates them in); other grants are `topic` lines of the section they are for.
    """
    logins = _checked_legacy_logins(access)
    deny: list[str] = []
    for policy in access.legacy:
        for device in access.devices:
            device_username(device.device_id)
            for spelling in id_spellings(device.device_id):
                deny += [template.format(id=spelling) for template in policy.id_topics]
    deny_lines = [f"topic deny {topic}" for topic in dict.fromkeys(deny)]

    def grants(policy: LegacyPolicy, *, bound: bool) -> list[str]:
        out = [f"topic write {t}" for t in policy.publish if ("%c" in t) == bound]
        out += [f"topic read {t}" for t in policy.read if ("%c" in t) == bound]
        return [line.replace("topic ", "pattern ", 1) for line in out] if bound else out

    lines = [
        "# Generated by fieldhub: the legacy stacks' policies (fieldhub/broker/legacy.py).",
        "",
        "# Anonymous clients.",
        *deny_lines,
    ]
    for policy in access.legacy:
        if policy.login is None:
            lines += grants(policy, bound=False)
    for username in logins:
        lines += ["", f"user {username}", *deny_lines]
        for policy in access.legacy:
            if policy.login == username:
                lines += grants(policy, bound=False)
    patterns = [line for policy in access.legacy for line in grants(policy, bound=True)]
    if patterns:
        lines += ["", "# Bound to the client's own id; checked after every deny line above."]
        lines += patterns
    return "\n".join(lines) + "\n"


def fastapi_firmware_login(password: str = FASTAPI_FIRMWARE_PASSWORD) -> LegacyLogin:
    """The FastAPI stack's compiled-in login, hashed (its published password by default)."""
    assert FASTAPI.login is not None
    return LegacyLogin(FASTAPI.login, hash_password(password))
