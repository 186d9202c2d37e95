"""A private certificate authority for fieldhub's listeners (HTTPS and MQTT over TLS).

`fieldhub certs init` makes a CA and a server certificate signed by it; the operator gives the
server certificate and key to fieldhub (`--tls-cert/--tls-key`), and the CA certificate to every
device, which then trusts that CA and nothing else (the firmware pins it: fieldhub_node/tls.py).
`fieldhub certs renew` issues a new server certificate from the same CA, so devices keep working.

Keys are EC P-256 (ECDSA with SHA-256), not RSA 2048. Both work with every party here (OpenSSL
under Mosquitto and uvicorn, Python's ssl, mbedTLS in MicroPython's ESP32 builds, where ESP-IDF
enables ECDSA and secp256r1 by default); P-256 was chosen because its certificates are about half
the size (the DER CA is ~450 bytes instead of ~850: less flash, and less heap on an ESP32 during
the handshake, where mbedTLS holds the CA and the server's chain at once) and keys are made in
milliseconds. Nothing here implements cryptography: the `cryptography` package does all of it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
import socket
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# File names inside the certificate directory. The CA also goes out as DER because that is what
# MicroPython documents for `SSLContext.load_verify_locations(cadata=...)` on the ESP32.
CA_CERT = "ca.pem"
CA_CERT_DER = "ca.der"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"

# The CA outlives many server certificates (devices pin it, so replacing it means touching every
# device); the server certificate stays within 825 days, the most Apple's TLS clients (and so
# the dashboard in Safari, once the CA is trusted there) accept.
CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=825)
# Certificates start an hour in the past: a client whose clock runs a little behind (an ESP32 just
# after NTP, a laptop) would otherwise see "not yet valid" right after `certs init`.
BACKDATE = datetime.timedelta(hours=1)

KEY_MODE = 0o600
DIR_MODE = 0o700
PUBLIC_MODE = 0o644

# Destinations used only to ask the kernel which local address it would send from (a UDP
# "connect" sends no packet). Documentation prefixes: never a real host.
_ROUTE_PROBES = ((socket.AF_INET, "198.51.100.1"), (socket.AF_INET6, "2001:db8::1"))


class CertError(Exception):
    """A certificate operation cannot be done; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ServerNames:
    """What the server certificate names: host names (DNS SANs) and addresses (IP SANs)."""

    hosts: tuple[str, ...]
    addresses: tuple[IPAddress, ...]

    def all(self) -> list[str]:
        return [*self.hosts, *(str(address) for address in self.addresses)]


@dataclass(frozen=True, slots=True)
class CertFiles:
    """Where one certificate directory keeps its files."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / CA_CERT

    @property
    def ca_cert_der(self) -> Path:
        return self.directory / CA_CERT_DER

    @property
    def ca_key(self) -> Path:
        return self.directory / CA_KEY

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY


@dataclass(frozen=True, slots=True)
class Issued:
    """What was written: the files, the names the server certificate covers, its end."""

    files: CertFiles
    names: ServerNames
    server_not_after: datetime.datetime
    ca_not_after: datetime.datetime


def local_addresses() -> list[IPAddress]:
    """This machine's non-loopback, non-link-local addresses that devices could reach: those
    its host name resolves to, and the ones the kernel would send from on its default routes.
    A machine with several networks may have more; `--ip` adds them."""
    found: list[IPAddress] = []
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError:
        infos = []
    candidates = [str(info[4][0]) for info in infos]
    for family, destination in _ROUTE_PROBES:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((destination, 9))
                candidates.append(str(probe.getsockname()[0]))
        except OSError:
            continue  # no route for this family
    for text in candidates:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        unreachable = address.is_loopback or address.is_link_local or address.is_unspecified
        if not unreachable and address not in found:
            found.append(address)
    return found


def default_names() -> ServerNames:
    """This machine's host name, its reachable addresses, localhost and 127.0.0.1."""
    hosts = [socket.gethostname()]
    fqdn = socket.getfqdn()
    if "." in fqdn and fqdn not in hosts:
        hosts.append(fqdn)
    hosts.append("localhost")
    addresses = [*local_addresses(), ipaddress.ip_address("127.0.0.1")]
    return server_names(hosts, [str(address) for address in addresses])


def server_names(hosts: Iterable[str], addresses: Iterable[str]) -> ServerNames:
    """Validated, de-duplicated names; CertError names the first unusable one. A `--host` that is
    an address counts as an address."""
    out_hosts: list[str] = []
    out_addresses: list[IPAddress] = []
    given = [(text, False) for text in hosts] + [(text, True) for text in addresses]
    for text, as_address in given:
        value = text.strip()
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            address = None
        if address is not None:
            if address not in out_addresses:
                out_addresses.append(address)
            continue
        if as_address:
            raise CertError(f"--ip {text!r} is not an IP address")
        name = value.lower().rstrip(".")
        if not _is_host_name(name):
            raise CertError(
                f"--host {text!r} is not a host name (letters, digits, '-' and '.', "
                "labels of 1..63 characters)"
            )
        if name not in out_hosts:
            out_hosts.append(name)
    if not out_hosts and not out_addresses:
        raise CertError("the server certificate needs at least one --host or --ip")
    return ServerNames(tuple(out_hosts), tuple(out_addresses))


def _is_host_name(name: str) -> bool:
    if not 0 < len(name) <= 253:
        return False
    labels = name.split(".")
    # A wildcard is allowed as the whole first label only (`*.lab.example`), as TLS clients match.
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-")
    return all(
        0 < len(label) <= 63 and set(label) <= allowed and label[0] != "-" and label[-1] != "-"
        for label in labels
    )


def init(
    directory: Path,
    names: ServerNames,
    *,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> Issued:
    """Make a CA and a server certificate for `names` in `directory` (created 0700).

    Refuses when a CA is already there unless `force`: devices pin the CA, so replacing it by
    accident would cut every device off until each is given the new one.
    """
    files = CertFiles(directory)
    existing = [path for path in (files.ca_cert, files.ca_key) if path.exists()]
    if existing and not force:
        raise CertError(
            f"a CA already exists in {directory} ({', '.join(p.name for p in existing)}); "
            "devices that pin it would stop connecting if it were replaced. "
            "`fieldhub certs renew` issues a new server certificate from it; "
            "`fieldhub certs init --force` replaces it (then give every device the new ca.der)"
        )
    moment = now or _now()
    _prepare_directory(directory)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, moment)
    _write_private(files.ca_key, _key_pem(ca_key))
    _write_public(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_public(files.ca_cert_der, ca_cert.public_bytes(serialization.Encoding.DER))
    server_not_after = _issue_server(files, ca_key, ca_cert, names, moment)
    return Issued(files, names, server_not_after, ca_cert.not_valid_after_utc)


def renew(
    directory: Path,
    names: ServerNames | None = None,
    *,
    now: datetime.datetime | None = None,
) -> Issued:
    """A new server certificate (and key) from the CA in `directory`. Without `names`, it covers
    what the current server certificate covers (or the defaults when there is none)."""
    files = CertFiles(directory)
    for path in (files.ca_cert, files.ca_key):
        if not path.exists():
            raise CertError(
                f"no CA in {directory} ({path.name} is missing): `fieldhub certs init` makes one"
            )
    try:
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CertError(f"cannot read the CA in {directory}: {exc}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or ca_key.public_key() != (
        ca_cert.public_key()
    ):
        raise CertError(f"{files.ca_key} is not the private key of {files.ca_cert}")
    if names is None:
        names = names_of(files.server_cert) if files.server_cert.exists() else default_names()
    moment = now or _now()
    if ca_cert.not_valid_after_utc <= moment:
        raise CertError(
            f"the CA in {directory} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}: "
            "`fieldhub certs init --force` makes a new one (then give every device its ca.der)"
        )
    _prepare_directory(directory)
    server_not_after = _issue_server(files, ca_key, ca_cert, names, moment)
    return Issued(files, names, server_not_after, ca_cert.not_valid_after_utc)


def names_of(cert_path: Path) -> ServerNames:
    """The names a server certificate covers (its subjectAltName), for renewing it as it was."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound) as exc:
        raise CertError(f"cannot read the names of {cert_path}: {exc}") from None
    addresses = [str(address) for address in san.get_values_for_type(x509.IPAddress)]
    # The DNS copies of the addresses (see _san) come back as addresses, once.
    hosts = [name for name in san.get_values_for_type(x509.DNSName) if not _is_address(name)]
    return server_names(hosts, addresses)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    # The host name and date tell two installations' CAs apart in a browser's or OS's trust list.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fieldhub"),
            x509.NameAttribute(
                NameOID.COMMON_NAME,
                f"fieldhub private CA {socket.gethostname()[:32]} {now:%Y-%m-%d}",
            ),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        # path_length=0: this CA signs server certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _issue_server(
    files: CertFiles,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: ServerNames,
    now: datetime.datetime,
) -> datetime.datetime:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    not_after = min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fieldhub"),
                    x509.NameAttribute(NameOID.COMMON_NAME, names.all()[0][:64]),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    # Key first: a certificate on disk whose key is the previous one would break the listener.
    _write_private(files.server_key, _key_pem(key))
    _write_public(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    return cert.not_valid_after_utc


def _san(names: ServerNames) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = [x509.DNSName(host) for host in names.hosts]
    entries += [x509.IPAddress(address) for address in names.addresses]
    # Each IPv4 address also as a DNS name: mbedTLS before 3.5 (the ESP-IDF 4.x/5.0/5.1 that
    # MicroPython ESP32 builds use) checks a server_hostname only against DNS names, so a device
    # configured with the broker's IP would refuse a certificate holding only the IP SAN
    # (Mbed-TLS/mbedtls#5082). OpenSSL and Python match addresses against IP SANs only, so the
    # DNS copy changes nothing for them. IPv6 is left out: the firmware does not use it.
    entries += [
        x509.DNSName(str(address))
        for address in names.addresses
        if isinstance(address, ipaddress.IPv4Address)
    ]
    return x509.SubjectAlternativeName(entries)


def _serial() -> int:
    # 159 random bits: positive, at most 20 octets (RFC 5280), unpredictable (CA/B Forum: 64+).
    return secrets.randbits(159) | 1


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS#8: Mosquitto and uvicorn read it without a passphrase prompt; the file
    # mode (0600 in a 0700 directory) is what protects it.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _prepare_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask, and an existing directory keeps its own mode.
        directory.chmod(DIR_MODE)
    except OSError as exc:
        raise CertError(f"cannot use {directory} for certificates: {exc}") from None


def _write_private(path: Path, data: bytes) -> None:
    _write(path, data, KEY_MODE)


def _write_public(path: Path, data: bytes) -> None:
    _write(path, data, PUBLIC_MODE)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file created with `mode` (a key is never readable by others,
    not even for a moment) and renamed over the target, so a reader sees old or new, whole."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        raise CertError(f"cannot write {path}: {exc}") from None
