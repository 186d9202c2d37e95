"""`fieldhub rules`: apply, list, show, enable, disable, delete and preview rule documents
(docs/rules.md), through the running fieldhub's API (an admin token to write, an operator's to
preview, a viewer's to read): the engine takes a new version live at once.

Every file is validated here before anything is sent, with the same model the server uses, so
`apply a.yaml b.yaml` with a mistake in b stores neither and names every invalid field."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml  # type: ignore[import-untyped]  # no stubs installed; only safe_dump used
from pydantic import ValidationError

from fieldhub.cli.api_client import DEFAULT_URL, TokenOption, UrlOption, api_call
from fieldhub.cli.common import fail
from fieldhub.errors import Invalid
from fieldhub.rules.model import Format, Rule, load_rule

app = typer.Typer(
    name="rules",
    help="Rules: conditions on devices' readings and what they do (docs/rules.md).",
    no_args_is_help=True,
)

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MEDIA: dict[Format, str] = {"json": "application/json", "yaml": "application/yaml"}


def _path(rule_id: str, *rest: str) -> str:
    return "/".join(["/api/v1/rules", urllib.parse.quote(rule_id, safe=""), *rest])


def file_format(path: Path, text: str) -> Format:
    """`.json` is JSON, `.yaml`/`.yml` YAML; otherwise JSON when it looks like an object."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    return "json" if text.lstrip().startswith("{") else "yaml"


def read_rule(path: Path) -> tuple[Rule, str, Format]:
    """The file's rule (validated), its text and format; exits naming every invalid field."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"{path}: {exc}") from None
    fmt = file_format(path, text)
    try:
        return load_rule(text, format=fmt), text, fmt
    except Invalid as exc:
        raise fail(f"{path}: {exc.message}") from None
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or '(document)'}: "
            f"{str(err['msg']).removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
        raise fail(f"{path}: not a valid rule:\n" + "\n".join(lines)) from None


def parse_since(value: str) -> float:
    """`90s`, `30m`, `24h`, `7d` (a bare number is seconds) -> seconds."""
    text = value.strip().lower()
    unit = text[-1:] if text[-1:] in _UNITS_S else "s"
    number = text[:-1] if text[-1:] in _UNITS_S else text
    try:
        seconds = float(number) * _UNITS_S[unit]
    except ValueError:
        raise fail(f"--since {value!r}: use e.g. 30m, 24h, 7d") from None
    if not seconds > 0:
        raise fail(f"--since {value!r} must be positive")
    return seconds


def _describe(row: dict[str, Any]) -> str:
    document = row["document"]
    state = "enabled" if row["enabled"] else "disabled"
    return (
        f"{row['id']:<32} v{row['version']:<4} {state:<9} "
        f"{document.get('severity', 'warning'):<8} {document.get('name', '')}"
    )


@app.command()
def apply(
    files: Annotated[list[Path], typer.Argument(help="Rule documents (.yaml, .yml or .json)")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Store each file as its rule's next version (admin); validates all of them first."""
    loaded = [(path, *read_rule(path)) for path in files]
    for path, rule, text, fmt in loaded:
        answer = api_call(
            url,
            _path(rule.id),
            token,
            "PUT",
            body=text.encode(),
            content_type=MEDIA[fmt],
        )
        note = "new rule" if answer["version"] == 1 else "new version"
        state = "enabled" if answer["enabled"] else "disabled"
        typer.echo(f"{rule.id}: version {answer['version']} ({note}, {state}) from {path}")


@app.command("list")
def list_(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Every rule's current version: id, version, enabled, severity, name."""
    for row in api_call(url, "/api/v1/rules", token)["data"]:
        typer.echo(_describe(row))


@app.command()
def show(
    rule_id: Annotated[str, typer.Argument(help="The rule's id")],
    version: Annotated[int | None, typer.Option(help="A past version (default: current)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML")] = False,
    history: Annotated[bool, typer.Option(help="List every version instead")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Print a rule's document (ready for `rules apply`), or its versions with --history."""
    if history:
        for row in api_call(url, _path(rule_id, "versions"), token)["data"]:
            deleted = f"  (rule deleted {row['deleted']})" if row["deleted"] else ""
            typer.echo(
                f"v{row['version']:<4} {row['created']}  {row['author']:<24} "
                f"{'enabled' if row['enabled'] else 'disabled'}{deleted}"
            )
        return
    path = _path(rule_id) if version is None else _path(rule_id, "versions", str(version))
    row = api_call(url, path, token)
    if as_json:
        typer.echo(json.dumps(row["document"], indent=2, ensure_ascii=False))
        return
    typer.echo(f"# {row['id']} version {row['version']} by {row['author']} at {row['created']}")
    typer.echo(yaml.safe_dump(row["document"], sort_keys=False, allow_unicode=True), nl=False)


def _set_enabled(rule_id: str, enabled: bool, url: str, token: str | None) -> None:
    action = "enable" if enabled else "disable"
    answer = api_call(url, _path(rule_id, action), token, "POST")
    typer.echo(f"{rule_id}: {action}d (version {answer['version']})")


@app.command()
def enable(
    rule_id: Annotated[str, typer.Argument(help="The rule's id")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Enable a rule (a new version)."""
    _set_enabled(rule_id, True, url, token)


@app.command()
def disable(
    rule_id: Annotated[str, typer.Argument(help="The rule's id")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Disable a rule (a new version): it stops evaluating at once."""
    _set_enabled(rule_id, False, url, token)


@app.command()
def delete(
    rule_id: Annotated[str, typer.Argument(help="The rule's id")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Delete a rule; its versions and alarms stay as history."""
    api_call(url, _path(rule_id), token, "DELETE")
    typer.echo(f"deleted {rule_id}")


def _us(value: int | None) -> str:
    if value is None:
        return "(still active)"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value / 1_000_000)) + "Z"


@app.command()
def preview(
    file: Annotated[Path, typer.Argument(help="A rule document (need not be stored)")],
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d (at most 31d)")] = "24h",
    device: Annotated[
        list[str] | None,
        typer.Option(help="Only this device (repeat for more; default: the rule's scope)"),
    ] = None,
    tick_s: Annotated[float, typer.Option(help="Timer period for no_data and for_s")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's answer")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """What the rule would have done over stored readings: alarm spans and actions per device."""
    rule, text, _ = read_rule(file)
    body: dict[str, Any] = {
        "rule": text,
        "start": time.time() - parse_since(since),
        "tick_s": tick_s,
    }
    if device:
        body["devices"] = device
    answer = api_call(
        url, "/api/v1/rules/preview", token, "POST", body=json.dumps(body).encode(), timeout=120
    )
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    typer.echo(f"{rule.id} from {answer['start']} to {answer['end']}:")
    if not answer["data"]:
        typer.echo("  no device in scope")
    for result in answer["data"]:
        spans = result["spans"]
        typer.echo(
            f"  {result['device']}: {len(spans)} alarm(s), {len(result['actions'])} action(s)"
        )
        for span in spans:
            typer.echo(f"    alarm {_us(span['fired_us'])} -> {_us(span['cleared_us'])}")
        for action in result["actions"]:
            typer.echo(f"    {_us(action['at_us'])} {action['reason']:<8} {action['kind']}")
        if result["truncated"]:
            typer.echo("    (more actions than a preview lists)")
