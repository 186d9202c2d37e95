"""A real Mosquitto with one TLS listener from a hand-written config, for certificate tests.

Deliberately not fieldhub's generated broker config (fieldhub.broker): these tests check the
certificates `fieldhub certs init` makes, whatever fieldhub's own listeners look like.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fieldhub.net import free_port, wait_for_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
START_TIMEOUT_S = 10.0


@contextmanager
def tls_mosquitto(workdir: Path, *, cert: Path, key: Path) -> Iterator[int]:
    """Mosquitto serving MQTT over TLS on 127.0.0.1 with `cert`/`key`; yields the port."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [
        "per_listener_settings false",
        "allow_anonymous true",
        "persistence false",
        f"listener {port} 127.0.0.1",
        f"certfile {cert}",
        f"keyfile {key}",
        "tls_version tlsv1.2",
    ]
    if os.geteuid() == 0:
        # As root, Mosquitto 2.0.11 switches to the `mosquitto` user BEFORE it reads certfile
        # and keyfile (checked: "Unable to load server certificate ... Permission denied" for a
        # root-owned 0700 certs directory), so the broker must run as the user owning the keys.
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        if not wait_for_port("127.0.0.1", port, START_TIMEOUT_S):
            raise AssertionError(
                f"mosquitto did not listen on {port}:\n"
                + (workdir / "mosquitto.log").read_text(errors="replace")
            )
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
