"""The node's MQTT over TLS: config (mqtt.tls, mqtt.ca), the setup portal's credential and CA
fields, and fieldhub_node.tls.client_context (the pinned-CA context the ESP32 hands to
umqtt.simple) doing a real handshake and MQTT CONNECT with a real Mosquitto TLS listener."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from fieldhub.security import certs
from fieldhub_node.config import ConfigError, validate
from fieldhub_node.portal_form import FORM_HTML, apply_form, ca_from_form, parse_form
from fieldhub_node.tls import client_context
from support.tls_mosquitto import tls_mosquitto

NAMES = certs.server_names(["localhost"], ["127.0.0.1"])
# MQTT 3.1.1 CONNECT, clean session, keepalive 30 s, client id "node-1" (what umqtt.simple sends).
CONNECT = b"\x10\x12\x00\x04MQTT\x04\x02\x00\x1e\x00\x06node-1"
CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


def minimal(**mqtt: object) -> dict[str, object]:
    return {"wifi": {"ssid": "lab"}, "mqtt": {"host": "10.0.0.2", **mqtt}}


def test_tls_is_off_by_default_and_names_ca_der() -> None:
    mqtt = validate(minimal())["mqtt"]
    assert (mqtt["tls"], mqtt["ca"], mqtt["port"]) == (False, "ca.der", 1883)
    mqtt = validate(minimal(tls=True, port=8883, ca="fieldhub-ca.der"))["mqtt"]
    assert (mqtt["tls"], mqtt["ca"], mqtt["port"]) == (True, "fieldhub-ca.der", 8883)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"tls": 1}, "mqtt.tls must be true or false, got 1"),
        ({"tls": "yes"}, "mqtt.tls must be true or false"),
        ({"ca": ""}, "mqtt.ca must name the CA certificate file"),
        ({"ca": None}, "mqtt.ca must be a string"),
        ({"cafile": "ca.der"}, "unknown setting mqtt.cafile"),
    ],
)
def test_bad_tls_settings_are_named(settings: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate(minimal(**settings))
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_portal_takes_credentials_and_tls() -> None:
    """The form has username, password, TLS and CA fields; TLS without a port means 8883;
    empty credentials stay null (an anonymous broker)."""
    for field in ("mqtt_user", "mqtt_password", "mqtt_tls", "mqtt_ca"):
        assert f"name={field}" in FORM_HTML
    body = (
        b"ssid=lab&mqtt_host=hub&mqtt_port="
        b"&mqtt_user=greenhouse-1&mqtt_password=s3cr%26t&mqtt_tls=1"
    )
    config = validate(apply_form({}, parse_form(body)))
    mqtt = config["mqtt"]
    assert (mqtt["user"], mqtt["password"], mqtt["tls"], mqtt["port"]) == (
        "greenhouse-1", "s3cr&t", True, 8883
    )  # fmt: skip
    plain = validate(
        apply_form({}, parse_form(b"ssid=lab&mqtt_host=hub&mqtt_user=&mqtt_password="))
    )
    assert (plain["mqtt"]["user"], plain["mqtt"]["password"]) == (None, None)
    assert (plain["mqtt"]["tls"], plain["mqtt"]["port"]) == (False, 1883)


def test_portal_turns_a_pasted_pem_ca_into_the_der_the_node_loads(tmp_path: Path) -> None:
    """ca.pem pasted into the form (urlencoded as a browser sends it) becomes exactly ca.der."""
    issued = certs.init(tmp_path / "certs", NAMES)
    from urllib.parse import urlencode

    body = urlencode({"mqtt_ca": issued.files.ca_cert.read_text()}).encode()
    assert ca_from_form(parse_form(body)) == issued.files.ca_cert_der.read_bytes()
    assert ca_from_form(parse_form(b"mqtt_ca=")) is None
    with pytest.raises(ValueError, match="pasted whole"):
        ca_from_form({"mqtt_ca": "MIIB..."})
    with pytest.raises(ValueError, match="not a certificate"):
        ca_from_form({"mqtt_ca": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"})


def mqtt_connect(context: ssl.SSLContext, port: int, server_hostname: str) -> bytes:
    """What umqtt.simple does: TCP, `context.wrap_socket(sock, server_hostname=host)`, CONNECT."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(CONNECT)
        return tls.recv(4)


def test_the_node_context_connects_only_to_a_broker_of_its_ca(tmp_path: Path) -> None:
    """Pinned to ca.der, the node's context completes TLS and MQTT CONNECT with the broker
    holding the server certificate; pinned to another CA, or checking a name the certificate
    lacks, the handshake fails before any MQTT byte is sent."""
    ours = certs.init(tmp_path / "ours", NAMES)
    theirs = certs.init(tmp_path / "theirs", NAMES)
    context = client_context(ours.files.ca_cert_der.read_bytes())
    assert context.verify_mode == ssl.CERT_REQUIRED
    with tls_mosquitto(
        tmp_path / "broker", cert=ours.files.server_cert, key=ours.files.server_key
    ) as port:
        assert mqtt_connect(context, port, "127.0.0.1") == CONNACK_ACCEPTED
        assert mqtt_connect(context, port, "localhost") == CONNACK_ACCEPTED
        foreign = client_context(theirs.files.ca_cert_der.read_bytes())
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            mqtt_connect(foreign, port, "127.0.0.1")
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            mqtt_connect(context, port, "broker.elsewhere.example")


def test_a_pem_or_empty_ca_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    issued = certs.init(tmp_path / "certs", NAMES)
    for wrong in (issued.files.ca_cert.read_bytes(), b""):
        with pytest.raises(ValueError, match=r"not a DER certificate \(use ca.der"):
            client_context(wrong)
