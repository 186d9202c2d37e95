"""`fieldhub certs init|renew`: the CA and server certificate it makes, checked by real TLS
peers (Python's ssl, Mosquitto with paho clients, fieldhub's uvicorn over HTTPS)."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from fieldhub.security import certs
from support.fieldhub_process import FieldhubProcess
from support.tls_mosquitto import tls_mosquitto
from support.waiting import wait_until

FIELDHUB = Path(sys.executable).with_name("fieldhub")
NAMES = certs.server_names(["hub.lab.example", "localhost"], ["192.0.2.10", "127.0.0.1", "fd00::5"])


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FIELDHUB), "certs", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def issued(tmp_path: Path) -> certs.Issued:
    return certs.init(tmp_path / "certs", NAMES)


class TlsEchoServer:
    """A Python TLS server with the server certificate that completes handshakes on 127.0.0.1."""

    def __init__(self, files: certs.CertFiles) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(files.server_cert, files.server_key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError):
                conn.close()  # the client refused our certificate: expected in some tests

    def handshake(self, ca: Path, server_hostname: str) -> bytes:
        """Connect to 127.0.0.1 presenting `server_hostname` (SNI and the name checked)."""
        client = ssl.create_default_context(cafile=ca)
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
            client.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            return tls.recv(2)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tls_server(issued: certs.Issued) -> Iterator[TlsEchoServer]:
    server = TlsEchoServer(issued.files)
    yield server
    server.close()


def test_python_ssl_verifies_the_server_certificate_for_every_name(
    issued: certs.Issued, tls_server: TlsEchoServer
) -> None:
    """A client trusting only ca.pem accepts the certificate under each host name and address,
    and refuses it under a name it does not hold."""
    for name in ("hub.lab.example", "localhost", "192.0.2.10", "127.0.0.1", "fd00::5"):
        assert tls_server.handshake(issued.files.ca_cert, name) == b"ok", name
    for stranger in ("other.lab.example", "192.0.2.11"):
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            tls_server.handshake(issued.files.ca_cert, stranger)


def test_the_certificates_say_what_devices_and_clients_need(issued: certs.Issued) -> None:
    """EC P-256 keys, a CA limited to signing servers, server validity 825 days, CA 10 years,
    IPv4 addresses also as DNS names (for mbedTLS < 3.5 on the ESP32), ca.der = ca.pem."""
    files = issued.files
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert x509.load_der_x509_certificate(files.ca_cert_der.read_bytes()) == ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert server.issuer == ca.subject
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days == 825
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 3650
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "hub.lab.example", "localhost", "192.0.2.10", "127.0.0.1"
    }  # fmt: skip
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("192.0.2.10", "127.0.0.1", "fd00::5")
    }
    assert certs.names_of(files.server_cert) == NAMES


def test_keys_are_private_and_the_directory_closed(issued: certs.Issued) -> None:
    """Keys 0600, certificates 0644, the directory 0700; no stray temporary file."""
    files = issued.files

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(files.directory) == 0o700
    assert mode(files.ca_key) == mode(files.server_key) == 0o600
    assert mode(files.ca_cert) == mode(files.ca_cert_der) == mode(files.server_cert) == 0o644
    assert sorted(p.name for p in files.directory.iterdir()) == sorted(
        ["ca.pem", "ca.der", "ca.key", "server.pem", "server.key"]
    )


def test_a_loose_existing_directory_is_closed(tmp_path: Path) -> None:
    """A directory that already existed 0755 (mkdir -p by hand) ends 0700."""
    target = tmp_path / "certs"
    target.mkdir(mode=0o755)
    certs.init(target, NAMES)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700


def test_init_refuses_to_replace_a_ca_without_force(tmp_path: Path) -> None:
    """A second `certs init` exits 1, says what to do, and leaves the CA as it was; --force
    replaces it."""
    target = tmp_path / "certs"
    first = run_cli("init", "--dir", str(target), "--host", "hub.lab.example")
    assert first.returncode == 0, first.stderr
    ca_before = (target / "ca.pem").read_bytes()
    key_before = (target / "ca.key").read_bytes()
    again = run_cli("init", "--dir", str(target), "--host", "hub.lab.example")
    assert again.returncode == 1
    assert "a CA already exists" in again.stderr
    assert "fieldhub certs renew" in again.stderr
    assert "--force" in again.stderr
    assert (target / "ca.pem").read_bytes() == ca_before
    assert (target / "ca.key").read_bytes() == key_before
    forced = run_cli("init", "--dir", str(target), "--host", "hub.lab.example", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (target / "ca.pem").read_bytes() != ca_before


def test_init_prints_paths_and_how_to_use_them_never_a_key(tmp_path: Path) -> None:
    """The output names every file and the exact flags and variables; no key material."""
    target = tmp_path / "my certs"
    result = run_cli("init", "--dir", str(target), "--host", "hub", "--ip", "192.0.2.10")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    quoted = f"'{target}"
    for expected in (
        f"--tls-cert {quoted}/server.pem'",
        f"--tls-key {quoted}/server.key'",
        f"FIELDHUB_TLS_CERT={quoted}/server.pem'",
        f"FIELDHUB_TLS_KEY={quoted}/server.key'",
        f"FIELDHUB_TLS_CA={quoted}/ca.pem'",
        f"mpremote cp {quoted}/ca.der' :ca.der",
        "for hub, 192.0.2.10",
    ):
        assert expected in out, expected
    assert "PRIVATE KEY" not in out + result.stderr
    for key in ("ca.key", "server.key"):
        body = (target / key).read_text().splitlines()[1]
        assert body not in out + result.stderr


def test_init_defaults_to_the_data_dir_and_this_machines_names(tmp_path: Path) -> None:
    """Without --dir: <data dir>/certs; without names: host name, localhost, 127.0.0.1 and the
    machine's non-loopback addresses."""
    result = subprocess.run(
        [str(FIELDHUB), "certs", "init"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "FIELDHUB_DATA_DIR": str(tmp_path / "data")},
    )
    assert result.returncode == 0, result.stderr
    names = certs.names_of(tmp_path / "data" / "certs" / "server.pem")
    assert socket.gethostname().lower() in names.hosts
    assert "localhost" in names.hosts
    assert ipaddress.ip_address("127.0.0.1") in names.addresses
    assert all(not a.is_loopback for a in names.addresses[:-1])


def test_bad_names_are_refused_clearly(tmp_path: Path) -> None:
    """--ip that is no address, --host that is no host name: exit 1 naming it, nothing made."""
    target = tmp_path / "certs"
    bad_ip = run_cli("init", "--dir", str(target), "--ip", "hub.lab")
    assert bad_ip.returncode == 1
    assert "--ip 'hub.lab' is not an IP address" in bad_ip.stderr
    bad_host = run_cli("init", "--dir", str(target), "--host", "bad name!")
    assert bad_host.returncode == 1
    assert "--host 'bad name!' is not a host name" in bad_host.stderr
    assert not target.exists()


def test_renew_keeps_the_ca_and_the_names(issued: certs.Issued) -> None:
    """`certs renew` issues a new server certificate and key from the same CA, for the same
    names: a device pinning ca.der keeps connecting."""
    files = issued.files
    ca_before = files.ca_cert.read_bytes()
    server_before = files.server_cert.read_bytes()
    key_before = files.server_key.read_bytes()
    result = run_cli("renew", "--dir", str(files.directory))
    assert result.returncode == 0, result.stderr
    assert "Restart fieldhub" in result.stdout
    assert files.ca_cert.read_bytes() == ca_before
    assert files.server_cert.read_bytes() != server_before
    assert files.server_key.read_bytes() != key_before
    assert certs.names_of(files.server_cert) == NAMES
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600
    server = TlsEchoServer(files)
    try:
        assert server.handshake(files.ca_cert, "hub.lab.example") == b"ok"
    finally:
        server.close()


def test_renew_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    result = run_cli("renew", "--dir", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "no CA in" in result.stderr
    assert "fieldhub certs init" in result.stderr


# --- Mosquitto ------------------------------------------------------------------------------


def paho_client(ca: Path | None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tls-{uuid.uuid4().hex[:8]}")
    if ca is None:
        client.tls_set()  # the system's trust store only
    else:
        client.tls_set(ca_certs=str(ca))
    return client


def test_mosquitto_serves_the_certificate_to_clients_pinning_the_ca(
    issued: certs.Issued, tmp_path: Path
) -> None:
    """A real Mosquitto TLS listener with the server certificate: a paho client trusting only
    ca.pem connects and round-trips a message; one trusting another CA (another `certs init`)
    or only the system's store is refused in the handshake."""
    stranger = certs.init(tmp_path / "stranger", NAMES)
    with tls_mosquitto(
        tmp_path / "broker", cert=issued.files.server_cert, key=issued.files.server_key
    ) as port:
        received: list[bytes] = []
        client = paho_client(issued.files.ca_cert)

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            received.append(message.payload)

        client.on_message = on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        try:
            wait_until(client.is_connected, what="TLS connection")
            client.subscribe("tls/test", qos=1)
            wait_until(
                lambda: client.publish("tls/test", b"over tls", qos=1).rc == 0 and received,
                what="the message back over TLS",
                interval_s=0.2,
            )
            assert received[0] == b"over tls"
        finally:
            client.disconnect()
            client.loop_stop()
        for ca in (stranger.files.ca_cert, None):
            with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
                paho_client(ca).connect("127.0.0.1", port)


# --- HTTPS ------------------------------------------------------------------------------------


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


class HttpsFieldhub(FieldhubProcess):
    """`fieldhub up` serving HTTPS, reached by a client trusting only the private CA."""

    ca: Path

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    def health(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"{self.base_url}/healthz", timeout=2.0, verify=trusting(self.ca))
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code in (200, 503) else None


def test_fieldhub_serves_https_with_the_certificate(issued: certs.Issued, tmp_path: Path) -> None:
    """fieldhub in demo mode with FIELDHUB_TLS_CERT/KEY answers over HTTPS for a client that
    trusts the CA, prints https URLs, refuses plain HTTP, and a client without the CA fails."""
    fieldhub = HttpsFieldhub(
        data_dir=tmp_path / "data",
        env={
            "FIELDHUB_AUTH": "false",
            "FIELDHUB_TLS_CERT": str(issued.files.server_cert),
            "FIELDHUB_TLS_KEY": str(issued.files.server_key),
        },
        extra_args=["--demo"],
    )
    fieldhub.ca = issued.files.ca_cert
    fieldhub.start(wait_connected=False)
    try:
        health = httpx.get(
            f"{fieldhub.base_url}/healthz", verify=trusting(issued.files.ca_cert), timeout=5
        )
        assert health.status_code in (200, 503)
        assert f"Dashboard: https://127.0.0.1:{fieldhub.http_port}/" in wait_until(
            lambda: "Dashboard:" in fieldhub.log_tail(200) and fieldhub.log_tail(200),
            what="the printed URLs",
        )
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{fieldhub.base_url}/healthz", timeout=5)  # system trust only
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{fieldhub.http_port}/healthz", timeout=5)
    finally:
        fieldhub.stop()
