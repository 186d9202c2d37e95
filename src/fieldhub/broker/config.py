"""Render the configuration file of the embedded Mosquitto broker.

Pure text generation: no processes, no file system writes. Every non-default
value below is a trap we reproduced with Mosquitto 2.0.11; the constant beside
it says what the default costs and what ours costs instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Mosquitto's default (1000) is per client and *silently drops* further QoS 1
# messages for a subscriber that falls behind or is offline with a persistent
# session, e.g. fieldhub's ingest client while fieldhub restarts. 500k is ~25 min
# of a 10k-device fleet reporting every 30 s (hours for a smaller fleet). Memory:
# measured ~420 B per queued firmware reading (66 B payload + topic + Mosquitto's
# per-message bookkeeping), so a full queue costs ~200 MB for that one client.
# 0 would mean "no limit": one stuck client could then take the whole box down.
MAX_QUEUED_MESSAGES = 500_000

# Second bound on the same per-client queue, for large payloads. Mosquitto counts
# only payload bytes here, so 128 MiB of 1 KiB payloads is ~130k messages and
# ~180 MB of memory with overhead: the same ~200 MB ceiling as the count above.
# Whichever limit is reached first applies; beyond it messages are dropped.
MAX_QUEUED_BYTES = 128 * 1024 * 1024

# Mosquitto's default (20) is how many unacknowledged QoS 1/2 messages it sends a
# client at once, for MQTT 3.1.1 *and* 5 (it also caps a v5 client's Receive
# Maximum, measured). Ingest acks after commit in batches of up to ~5000, so 20
# would cap every batch at 20 rows and collapse throughput. 65535 is the ceiling
# anyway: MQTT packet ids are 16-bit and a v5 Receive Maximum cannot exceed it.
# (0 means "no maximum" in 2.0 and measured the same; the explicit number reads
# better and cannot be mistaken for "none allowed".)
MAX_INFLIGHT_MESSAGES = 65535

# Longest keepalive Mosquitto grants an MQTT v5 client (it answers with a Server
# Keep Alive); 3.1.1 clients are not affected in 2.0.11 (measured). The default
# 65535 s (and 0 = never) lets a device that vanished without a TCP FIN hold its
# session and delay its will message for up to 27 h. 300 s still covers the
# 60-120 s keepalives ESP32 MQTT stacks use, and bounds a dead link to 7.5 min.
MAX_KEEPALIVE_S = 300

# Seconds between two saves of the in-memory state (sessions, queued and
# retained messages) to mosquitto.db. On SIGTERM Mosquitto saves anyway; this
# bounds what a SIGKILL, an OOM kill or a power cut loses. Default 1800 s. A save
# blocks the broker: measured 0.24 s for 200k queued messages (35 MB file), so a
# full queue stalls it ~0.6 s once a minute, and an empty one costs nothing.
AUTOSAVE_INTERVAL_S = 60

# Timestamps in the log as local ISO 8601 instead of Unix seconds, so the broker
# log can be read next to fieldhub's own log without converting.
LOG_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"

# One `log_type` per line: Mosquitto 2.0.11 reads only the first word of the
# line and silently ignores the rest (measured: `log_type error information`
# logs no information). "information" adds only the start, listen-socket, save
# and stop lines once connection messages are off (measured, including the
# firmware's take-over reconnects every 30 s); those lines are what tells an
# operator that the persistence file was or was not written.
LOG_TYPES = ("error", "warning", "notice", "information")


@dataclass(frozen=True, slots=True)
class SecurityFiles:
    """Where the rendered access files are (fieldhub/broker/access.py renders them)."""

    password_file: Path
    acl_file: Path
    legacy_password_file: Path
    legacy_acl_file: Path


@dataclass(frozen=True, slots=True)
class TlsListener:
    """The MQTT over TLS listener (same host as the main one, same password and ACL files)."""

    port: int
    certfile: Path
    keyfile: Path


@dataclass(frozen=True, slots=True)
class LegacyListener:
    """The listener for fleets of the earlier stacks: anonymous, under legacy.py's policies."""

    host: str
    port: int


def _check_address(what: str, host: str, port: int) -> None:
    if not 0 < port < 65536:
        # `listener 0` is refused by Mosquitto; catch it here with a clear message.
        raise ValueError(f"{what} port must be in 1..65535, got {port}")
    if not host or any(ch.isspace() for ch in host):
        # An empty host would silently turn into the all-interfaces listener.
        raise ValueError(
            f"{what} host must be a non-empty address without whitespace, got {host!r}"
        )


def _check_path(what: str, path: Path) -> None:
    if any(ch.isspace() for ch in str(path)):
        # The config format splits on spaces and has no quoting.
        raise ValueError(f"{what} must not contain whitespace: {path!s}")


def _secured_listener_lines(files: SecurityFiles) -> list[str]:
    return [
        "allow_anonymous false",
        f"password_file {files.password_file}",
        f"acl_file {files.acl_file}",
        "# The client id is the username: no client can take another's id (and session).",
        "use_username_as_clientid true",
    ]


def render_mosquitto_conf(
    *,
    host: str,
    port: int,
    persistence_dir: Path,
    user: str | None = None,
    security: SecurityFiles | None = None,
    tls: TlsListener | None = None,
    legacy: LegacyListener | None = None,
) -> str:
    """Return the text of mosquitto.conf for fieldhub's embedded broker.

    `host` must be an address (or a resolvable name) of this machine: the
    listener is always written with it, because `listener PORT` alone binds every
    interface *and* then refuses anonymous clients. `persistence_dir` must be
    writable by the user Mosquitto runs as (see `user`).

    `user` is only written when given. Mosquitto started as root switches to the
    user `mosquitto` (or `nobody` if that does not exist) right after opening its
    listener, and only then writes the persistence file; the supervisor chooses
    the user and prepares the directory for it. Started as another user,
    Mosquitto ignores the option.

    `security` None is demo mode: one anonymous listener, nothing else. Given, every listener
    has its own settings (`per_listener_settings true`): the main one and the optional `tls`
    one admit only users of the password file, under the ACL file; the optional `legacy` one
    admits anonymous clients (and the legacy stacks' logins) under the legacy ACL file.
    """
    _check_address("the", host, port)
    _check_path("persistence_dir", persistence_dir)
    if security is None and (tls is not None or legacy is not None):
        raise ValueError("TLS and legacy listeners need security files (demo mode has neither)")
    if security is not None:
        for name in SecurityFiles.__slots__:
            _check_path(name, getattr(security, name))
    ports = [port]
    if tls is not None:
        _check_address("the TLS", host, tls.port)
        _check_path("certfile", tls.certfile)
        _check_path("keyfile", tls.keyfile)
        ports.append(tls.port)
    if legacy is not None:
        _check_address("the legacy", legacy.host, legacy.port)
        ports.append(legacy.port)
    if len(set(ports)) != len(ports):
        raise ValueError(f"listeners need distinct ports, got {ports}")

    # Mosquitto 1.x joined location and file name without a separator; 2.0
    # adds one (giving a harmless `//`). The trailing slash is right for both.
    location = f"{str(persistence_dir).rstrip('/')}/"
    lines = ["# Generated by fieldhub on every start: edits here are overwritten.", ""]
    if security is None:
        lines += [
            "# Always with an address: without one Mosquitto binds every interface",
            "# and refuses anonymous clients.",
            f"listener {port} {host}",
            "allow_anonymous true",
            "",
        ]
    else:
        lines += [
            "# Each listener below has its own authentication and ACL file.",
            "per_listener_settings true",
            "",
            "# Always with an address: without one Mosquitto binds every interface.",
            f"listener {port} {host}",
            *_secured_listener_lines(security),
            "",
        ]
        if tls is not None:
            lines += [
                f"listener {tls.port} {host}",
                f"certfile {tls.certfile}",
                f"keyfile {tls.keyfile}",
                *_secured_listener_lines(security),
                "",
            ]
        if legacy is not None:
            lines += [
                "# Fleets of the earlier stacks, which cannot be given credentials.",
                f"listener {legacy.port} {legacy.host}",
                "allow_anonymous true",
                "# Always a password file: without one any username and password is accepted.",
                f"password_file {security.legacy_password_file}",
                f"acl_file {security.legacy_acl_file}",
                "",
            ]
    lines += [
        "# Without it every request/ack round trip waits 44-88 ms (Nagle + delayed ACK).",
        "set_tcp_nodelay true",
        "",
        "# Flow control: see fieldhub/broker/config.py for the measurements.",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        f"max_keepalive {MAX_KEEPALIVE_S}",
        "",
        "persistence true",
        f"persistence_location {location}",
        f"autosave_interval {AUTOSAVE_INTERVAL_S}",
        "",
        "# stderr is redirected to mosquitto.log by the supervisor.",
        "log_dest stderr",
        *(f"log_type {log_type}" for log_type in LOG_TYPES),
        "log_timestamp true",
        f"log_timestamp_format {LOG_TIMESTAMP_FORMAT}",
        "# Devices reconnect every 30 s: two log lines per reading otherwise.",
        "connection_messages false",
    ]
    if user is not None:
        lines += ["", f"user {user}"]
    return "\n".join(lines) + "\n"
