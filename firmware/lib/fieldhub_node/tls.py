"""The node's TLS client context: the broker must prove it holds a certificate from one CA.

Pinning: the context trusts exactly the CA given (fieldhub's private CA from `fieldhub certs
init`, as DER), nothing from any bundle, so neither a public CA nor a look-alike broker on the
LAN can stand in for fieldhub's. umqtt.simple then calls `wrap_socket(sock,
server_hostname=<mqtt.host>)`, and the certificate must also name that host.

Written for MicroPython 1.23+ (its `ssl` module wraps `tls.SSLContext`); the same calls work on
CPython, so tests/firmware runs this function against a real Mosquitto TLS listener.
"""

import ssl

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass


def client_context(cadata: bytes) -> Any:
    """A client context that verifies the server against `cadata` (one CA certificate, DER)."""
    if not cadata or cadata[0] != 0x30:
        # A DER certificate starts with a SEQUENCE tag; anything else (a PEM file renamed, an
        # empty file) would surface later as an opaque mbedTLS error code on the serial console.
        raise ValueError("the CA file is not a DER certificate (use ca.der from fieldhub certs init)")
    # Any: the MicroPython stubs lack `verify_mode`, which both ports have.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # type: Any
    # MicroPython's SSLContext starts at CERT_NONE (unlike CPython's client default), and with
    # mbedTLS only CERT_REQUIRED verifies anything: without this line TLS would accept any server.
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=cadata)
    return context
