"""fieldhub with a certificate from `fieldhub certs init`: HTTPS for people and programs, MQTT
over TLS for devices, and provisioning tells a node to use TLS with the CA pinned."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from broker.clients import connect
from fieldhub.net import free_port
from fieldhub.security import certs
from support.fieldhub_process import FieldhubProcess, wait_until
from support.secrets import remember


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FieldhubProcess, Path, int]]:
    root = tmp_path_factory.mktemp("tls")
    issued = certs.init(root / "certs", certs.server_names(["localhost"], ["127.0.0.1"]))
    # Every HTTPS client of this module (httpx here and in tests/support) trusts fieldhub's CA.
    patch = pytest.MonkeyPatch()
    patch.setenv("SSL_CERT_FILE", str(issued.files.ca_cert))
    tls_port = free_port()
    fh = FieldhubProcess(
        data_dir=root / "fh",
        auth=True,
        extra_args=[
            "--tls-cert",
            str(issued.files.server_cert),
            "--tls-key",
            str(issued.files.server_key),
            "--tls-ca",
            str(issued.files.ca_cert),
            "--mqtt-tls-port",
            str(tls_port),
        ],
        scheme="https",
    ).start()
    yield fh, issued.files.ca_cert, tls_port
    fh.stop()
    patch.undo()


def test_a_provisioned_node_connects_over_tls_with_the_ca_pinned(
    secured: tuple[FieldhubProcess, Path, int],
) -> None:
    fh, ca, tls_port = secured
    answer = httpx.post(
        f"{fh.base_url}/api/v1/devices/tls-node/credentials",
        headers=fh.headers,
        timeout=15,
    )
    assert answer.status_code == 201, answer.text
    issued = answer.json()
    remember(issued["password"])
    mqtt = issued["config"]["mqtt"]
    assert (mqtt["tls"], mqtt["port"], mqtt["ca"]) == (True, tls_port, "ca.der")

    device = connect(
        "localhost", tls_port, username=mqtt["user"], password=mqtt["password"], tls_ca=ca
    )
    device.publish("devices/tls-node/telemetry", json.dumps({"temperature": 3.5}).encode())
    wait_until(
        lambda: (
            fh.get("/api/v1/devices/tls-node/readings", metric="temperature").status_code == 200
        ),
        timeout_s=10,
    )
    device.stop()
    # The same credentials from a client that trusts only the system's CAs: refused.
    system_cas = Path(ssl.get_default_verify_paths().openssl_cafile)
    with pytest.raises(ssl.SSLError):
        connect(
            "localhost",
            tls_port,
            username=mqtt["user"],
            password=mqtt["password"],
            tls_ca=system_cas,
        )


def test_the_api_is_served_over_https_only(secured: tuple[FieldhubProcess, Path, int]) -> None:
    fh = secured[0]
    assert fh.base_url.startswith("https://")
    assert "Warning:" not in fh.log_path.read_text()
    assert httpx.get(f"{fh.base_url}/healthz", timeout=5).status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(fh.base_url.replace("https://", "http://") + "/healthz", timeout=5)
