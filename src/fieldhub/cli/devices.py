"""`fieldhub devices`: give a node its broker credentials, rotate or revoke them, list them.

Through the running fieldhub's API (an admin token), because the broker must apply a change at
once: a revoked device is disconnected by the reload that the API triggers.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Annotated, Any

import typer

from fieldhub.cli.api_client import DEFAULT_URL, TokenOption, UrlOption, fieldhub_http

app = typer.Typer(
    name="devices",
    help="Device credentials on the broker (docs/security.md).",
    no_args_is_help=True,
)

TIMEOUT_S = 15.0


def _call(url: str, path: str, token: str | None, method: str) -> Any:
    request = urllib.request.Request(f"{url.rstrip('/')}{path}", method=method)
    with fieldhub_http(request, url=url, token=token, timeout=TIMEOUT_S) as response:
        body = response.read()
    return json.loads(body) if body else None


def _credentials_path(device: str) -> str:
    return f"/api/v1/devices/{urllib.parse.quote(device, safe='')}/credentials"


def _issue(device: str, url: str, token: str | None, host: str | None) -> None:
    query = f"?{urllib.parse.urlencode({'host': host})}" if host else ""
    answer = _call(url, _credentials_path(device) + query, token, "POST")
    typer.echo(json.dumps(answer["config"], indent=2))
    note = "replaced the old secret, which no longer works" if answer["rotated"] else "is new"
    if not answer["enforced"]:
        typer.secho(
            "this fieldhub does not run the broker with authentication: give the credential to "
            "your broker yourself (docs/security.md, 'With an external broker')",
            err=True,
            fg=typer.colors.YELLOW,
        )
    typer.secho(
        f"device {answer['device_id']}: the secret above {note} and is shown only now; merge "
        "this into the node's config.json (or enter it in its first-boot portal)",
        err=True,
        fg=typer.colors.YELLOW,
    )


BrokerHost = Annotated[
    str | None,
    typer.Option(help="Broker address the node should use (default: the one fieldhub knows)"),
]


@app.command()
def provision(
    device: Annotated[str, typer.Argument(help="Device id (any MAC spelling)")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    host: BrokerHost = None,
) -> None:
    """Issue the device's broker credentials and print the config.json entries to flash."""
    _issue(device, url, token, host)


# Rotating is issuing again: the new secret replaces the old one, which is refused at once.
app.command(
    "rotate",
    help="Replace the device's secret (the old one is refused at once); print the new entries.",
)(provision)


@app.command()
def revoke(
    device: Annotated[str, typer.Argument(help="Device id (any MAC spelling)")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Revoke the device's credentials: the broker disconnects it and refuses it from now on."""
    _call(url, _credentials_path(device), token, "DELETE")
    typer.echo(f"revoked {device}: disconnected and refused from now on")


@app.command("list")
def list_(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Every device credential: username, issued, rotated, revoked."""
    rows = _call(url, "/api/v1/device-credentials", token, "GET")
    for row in rows:
        state = f"revoked {row['revoked']}" if row["revoked"] else "active"
        typer.echo(
            f"{row['device_id']:<24} {row['username']:<24} rotated {row['rotated']}  {state}"
        )
