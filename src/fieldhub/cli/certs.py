"""`fieldhub certs init|renew`: a private CA and the server certificate for HTTPS and MQTT/TLS
(fieldhub.security.certs does the work; this prints where the files are and how to use them)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer

from fieldhub.cli.common import fail
from fieldhub.config import Settings
from fieldhub.security.certs import CertError, Issued, default_names, server_names

app = typer.Typer(
    name="certs",
    help="Make a private CA and server certificate for HTTPS and MQTT over TLS.",
    no_args_is_help=True,
)

# The TLS port printed in the instructions: the one MQTT clients (and the firmware) expect.
MQTT_TLS_PORT = 8883

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="Where the certificates go [default: <data dir>/certs]"),
]
DataDirOption = Annotated[
    Path | None, typer.Option(help="fieldhub's data directory [FIELDHUB_DATA_DIR]")
]
HostOption = Annotated[
    list[str] | None,
    typer.Option(
        "--host",
        help="A name devices and browsers use for this machine (repeat for several) "
        "[default: this machine's host name and localhost]",
    ),
]
IpOption = Annotated[
    list[str] | None,
    typer.Option(
        "--ip",
        help="An address devices use for this machine (repeat for several) "
        "[default: its non-loopback addresses and 127.0.0.1]",
    ),
]


def _directory(directory: Path | None, data_dir: Path | None) -> Path:
    if directory is not None:
        return directory
    if data_dir is None:
        # Only the data directory is read, not the whole Settings: a half-configured
        # environment (FIELDHUB_MQTT_TLS_PORT set before the certificate exists) must not stop
        # the command that makes the certificate.
        env = os.environ.get("FIELDHUB_DATA_DIR")
        default = Settings.model_fields["data_dir"].default
        data_dir = Path(env) if env else Path(default)
    return data_dir / "certs"


def init(
    directory: DirOption = None,
    data_dir: DataDirOption = None,
    host: HostOption = None,
    ip: IpOption = None,
    force: Annotated[
        bool, typer.Option(help="Replace an existing CA (every device then needs the new one)")
    ] = False,
) -> None:
    """Make a private CA and a server certificate signed by it."""
    from fieldhub.security import certs as make

    target = _directory(directory, data_dir)
    try:
        names = server_names(host or [], ip or []) if host or ip else default_names()
        issued = make.init(target, names, force=force)
    except CertError as exc:
        raise fail(str(exc), 1) from None
    typer.echo(f"Made a private CA and a server certificate in {target}")
    _report(issued, made_ca=True)


def renew(
    directory: DirOption = None,
    data_dir: DataDirOption = None,
    host: HostOption = None,
    ip: IpOption = None,
) -> None:
    """Issue a new server certificate from the existing CA (devices keep working).

    Without --host/--ip it covers the names the current certificate covers."""
    from fieldhub.security import certs as make

    target = _directory(directory, data_dir)
    try:
        names = server_names(host or [], ip or []) if host or ip else None
        issued = make.renew(target, names)
    except CertError as exc:
        raise fail(str(exc), 1) from None
    typer.echo(f"Issued a new server certificate from the CA in {target}")
    _report(issued, made_ca=False)
    typer.echo("Restart fieldhub to serve it (HTTPS and Mosquitto read certificates at start).")


def _report(issued: Issued, *, made_ca: bool) -> None:
    files = issued.files
    q = shlex.quote
    typer.echo(
        f"  server certificate  {files.server_cert}\n"
        f"    for {', '.join(issued.names.all())}\n"
        f"    valid until {issued.server_not_after:%Y-%m-%d} (renew before: fieldhub certs renew)\n"
        f"  server key          {files.server_key}  (0600; never copy it anywhere)\n"
        f"  CA certificate      {files.ca_cert}  (and {files.ca_cert_der.name} for devices)\n"
        f"    valid until {issued.ca_not_after:%Y-%m-%d}\n"
        f"  CA key              {files.ca_key}  (0600; signs certificates: keep it private)"
    )
    typer.echo("\nServe HTTPS and MQTT over TLS with them:")
    typer.echo(
        f"  fieldhub up --tls-cert {q(str(files.server_cert))} "
        f"--tls-key {q(str(files.server_key))} --mqtt-tls-port {MQTT_TLS_PORT}"
    )
    typer.echo("or with variables:")
    for name, value in (
        ("FIELDHUB_TLS_CERT", str(files.server_cert)),
        ("FIELDHUB_TLS_KEY", str(files.server_key)),
        ("FIELDHUB_TLS_CA", str(files.ca_cert)),
        ("FIELDHUB_MQTT_TLS_PORT", str(MQTT_TLS_PORT)),
    ):
        typer.echo(f"  export {name}={q(value)}")
    if made_ca:
        typer.echo(
            "\nDevices (firmware/README.md): copy the CA to the node and turn TLS on in its "
            "config.json:\n"
            f"  mpremote cp {q(str(files.ca_cert_der))} :ca.der\n"
            f'  "mqtt": {{"host": "<one of the names above>", "port": {MQTT_TLS_PORT}, '
            '"tls": true, "ca": "ca.der", ...}\n'
            f"Browsers and other clients: trust {files.ca_cert} (e.g. curl --cacert, "
            "mosquitto_sub --cafile)."
        )


app.command()(init)
app.command()(renew)
