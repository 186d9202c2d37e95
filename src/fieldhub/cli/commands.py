"""`fieldhub command`: send a command to a device through fieldhub's API and wait for its end."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Annotated, Any

import typer

from fieldhub.cli.api_client import DEFAULT_URL, TokenOption, UrlOption, fieldhub_http
from fieldhub.cli.common import fail


def _param(text: str) -> tuple[str, Any]:
    """`key=value`; the value is JSON when it parses (`40`, `true`, `"on"`), else the text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise fail(f"parameter {text!r} is not key=value (e.g. position=40)")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def command(
    device: Annotated[str, typer.Argument(help="Device id (any MAC spelling)")],
    name: Annotated[str, typer.Argument(help="Command name, e.g. set_window")],
    params: Annotated[
        list[str] | None, typer.Argument(help="Parameters as key=value, e.g. position=40")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    wait: Annotated[
        float, typer.Option(min=0, max=30, help="Seconds to wait for the device's answer")
    ] = 10.0,
    timeout: Annotated[
        float | None, typer.Option(min=0.5, max=3600, help="Seconds the device has to answer")
    ] = None,
) -> None:
    """Send a command to a device and print how it ended (docs/commands.md).

    Exit status: 0 succeeded, 1 failed/timed out/expired/cancelled or still open after --wait,
    2 refused by fieldhub (the message says why).
    """
    body: dict[str, Any] = {"name": name, "params": dict(_param(p) for p in params or [])}
    if timeout is not None:
        body["timeout_s"] = timeout
    target = (
        f"{url.rstrip('/')}/api/v1/devices/{urllib.parse.quote(device, safe='')}/commands"
        f"?wait_s={wait:g}"
    )
    request = urllib.request.Request(
        target,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with fieldhub_http(request, url=url, token=token, timeout=wait + 10) as response:
        answer = json.loads(response.read())
    for step in answer.get("history") or []:
        typer.echo(f"{step['at']}  {step['state']:<10} {step['detail']}")
    state = answer["state"]
    if answer.get("result") is not None:
        typer.echo(f"result: {json.dumps(answer['result'])}")
    if state not in ("succeeded", "failed", "timed_out", "expired", "cancelled"):
        typer.echo(
            f"still {state} after {wait:g} s; follow it: GET {target.split('?')[0]}/{answer['id']}"
        )
    raise typer.Exit(0 if state == "succeeded" else 1)
