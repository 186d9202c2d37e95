"""`fieldhub alarms`: list, show, acknowledge and clear the alarms rules raised (docs/rules.md),
through the running fieldhub's API (a viewer token reads; acknowledging and clearing need an
operator's)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Annotated, Any, Literal

import typer

from fieldhub.cli.api_client import DEFAULT_URL, TokenOption, UrlOption, api_call

app = typer.Typer(
    name="alarms",
    help="Alarms raised by rules: list, acknowledge, clear (docs/rules.md).",
    no_args_is_help=True,
)

AlarmId = Annotated[str, typer.Argument(help="The alarm's id (from `fieldhub alarms list`)")]
CommentOption = Annotated[str | None, typer.Option(help="Why; kept in the alarm's history")]


def _path(alarm_id: str, *rest: str) -> str:
    return "/".join(["/api/v1/alarms", urllib.parse.quote(alarm_id, safe=""), *rest])


def _line(alarm: dict[str, Any]) -> str:
    return (
        f"{alarm['id']}  {alarm['state']:<12} {alarm['severity']:<8} {alarm['rule']:<24} "
        f"{alarm['device']:<20} raised {alarm['raised']}"
    )


@app.command("list")
def list_(
    state: Annotated[
        str | None,
        typer.Option(help="open (active or acknowledged), active, acknowledged, cleared"),
    ] = "open",
    device: Annotated[str | None, typer.Option(help="Only this device")] = None,
    rule: Annotated[str | None, typer.Option(help="Only this rule")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    all_states: Annotated[bool, typer.Option("--all", help="Every state, cleared too")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Alarms newest first (open ones unless --state or --all)."""
    query = {"limit": str(limit)}
    if state and not all_states:
        query["state"] = state
    if device:
        query["device"] = device
    if rule:
        query["rule"] = rule
    answer = api_call(url, f"/api/v1/alarms?{urllib.parse.urlencode(query)}", token)
    for alarm in answer["data"]:
        typer.echo(_line(alarm))
    if answer["next_cursor"]:
        typer.echo(f"(more: raise --limit above {limit})", err=True)


@app.command()
def show(alarm_id: AlarmId, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """An alarm with every step of its life, as JSON."""
    typer.echo(json.dumps(api_call(url, _path(alarm_id), token), indent=2, ensure_ascii=False))


def _move(
    alarm_id: str,
    to: Literal["acknowledge", "clear"],
    comment: str | None,
    url: str,
    token: str | None,
) -> None:
    body = json.dumps({"comment": comment}).encode()
    alarm = api_call(url, _path(alarm_id, to), token, "POST", body=body)
    typer.echo(_line(alarm))


@app.command()
def ack(
    alarm_id: AlarmId,
    comment: CommentOption = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Acknowledge an active alarm: its repeats and escalation stop."""
    _move(alarm_id, "acknowledge", comment, url, token)


@app.command()
def clear(
    alarm_id: AlarmId,
    comment: CommentOption = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Clear an open alarm by hand, acknowledged or not."""
    _move(alarm_id, "clear", comment, url, token)
