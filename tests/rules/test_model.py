"""Rule documents: the shipped examples load, round-trip, and every invalid document is refused
with a ValidationError naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fieldhub.commands.formats import FASTAPI_COMMANDS
from fieldhub.errors import Invalid
from fieldhub.rules.model import CommandAction, Rule, Scope, ScopeMatch, dump_rule, load_rule

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "rules").glob("*.yaml"))


def test_there_are_the_six_shipped_examples() -> None:
    assert {path.stem for path in EXAMPLES} == {
        "cold-room",
        "gateway-no-data",
        "fastapi-light-schedule",
        "fastapi-fan-threshold",
        "fastapi-gas-emergency",
        "window-zscore-trigger",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.stem)
def test_every_example_validates_and_round_trips(path: Path) -> None:
    rule = load_rule(path.read_text(), format="yaml")
    assert load_rule(dump_rule(rule, format="yaml"), format="yaml") == rule
    assert load_rule(dump_rule(rule, format="json"), format="json") == rule
    for action in rule.actions:
        if isinstance(action, CommandAction) and rule.scope.profile == "native":
            spec = FASTAPI_COMMANDS[action.command.name]  # a real command of the stack
            spec.params.model_validate(action.command.params)


BASE: dict[str, Any] = {
    "id": "r",
    "name": "r",
    "scope": {"all": True},
    "condition": {"threshold": {"metric": "temperature", "above": 8}},
    "actions": [{"alarm": {}}],
}
T = {"metric": "temperature"}


def with_(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


INVALID = [
    ("above", with_(condition={"threshold": {**T, "above": 8, "below": 2}})),
    ("above", with_(condition={"threshold": T})),
    ("clear_below", with_(condition={"threshold": {**T, "above": 8, "clear_below": 9}})),
    ("clear_above", with_(condition={"threshold": {**T, "below": 8, "clear_above": 7}})),
    ("clear_above", with_(condition={"threshold": {**T, "above": 8, "clear_above": 9}})),
    ("for_s", with_(condition={"threshold": {**T, "above": 8, "for_s": -1}})),
    ("tz", with_(condition={"schedule": {"tz": "Mars/Olympus", "on_hour": 1, "off_hour": 2}})),
    ("on_hour", with_(condition={"schedule": {"tz": "UTC", "on_hour": 24, "off_hour": 2}})),
    ("off_hour", with_(condition={"schedule": {"tz": "UTC", "on_hour": 3, "off_hour": 3}})),
    ("days", with_(condition={"schedule": {"tz": "UTC", "on_hour": 3, "off_hour": 4, "days": []}})),
    ("all", with_(condition={"all": []})),
    ("any", with_(condition={"any": []})),
    ("condition", with_(condition={"threshold": {**T, "above": 1}, "rate": {}})),
    ("condition", with_(condition={"treshold": {**T, "above": 1}})),
    ("abvoe", with_(condition={"threshold": {**T, "abvoe": 1}})),
    ("n", with_(condition={"zscore": {**T, "n": 1, "threshold": 1.5}})),
    ("window_s", with_(condition={"rate": {**T, "window_s": 0, "above": 1}})),
    ("above", with_(condition={"rate": {**T, "window_s": 60}})),
    ("for_s", with_(condition={"no_data": {}})),
    ("abvoe", with_(overrides={"fridge-1": {"abvoe": 6}})),
    ("metric", with_(overrides={"fridge-1": {"metric": "humidity"}})),
    ("clear_below", with_(overrides={"fridge-1": {"clear_below": 9}})),
    ("overrides", with_(overrides={"bad id!": {"above": 6}})),
    ("id", with_(id="Cold Room")),
    ("scope", with_(scope={"profile": "native", "device": "x"})),
    ("scope", with_(scope={})),
    ("profile", with_(scope={"profile": "flask"})),
    ("device", with_(scope={"device": "a/b"})),
    ("severity", with_(severity="fatal")),
    ("actions", with_(actions=[])),
    ("actions", with_(actions=[{"pager": {}}])),
    ("actions", with_(actions=[{"alarm": {}}, {"alarm": {}}])),
    ("url", with_(actions=[{"webhook": {"url": "ftp://x", "secret_env": "S"}}])),
    ("secret_env", with_(actions=[{"webhook": {"url": "https://x", "secret_env": "a b"}}])),
    ("to", with_(actions=[{"email": {"to": []}}])),
    ("to", with_(actions=[{"email": {"to": ["not-an-address"]}}])),
    ("topic", with_(actions=[{"mqtt": {"topic": "a/#", "payload": ""}}])),
    ("payload", with_(actions=[{"mqtt": {"topic": "a", "payload": "$nope"}}])),
    ("name", with_(actions=[{"command": {"name": "FAN CONTROL"}}])),
    ("when", with_(actions=[{"command": {"name": "FAN_CONTROL", "when": "always"}}])),
    ("repeat_every_s", with_(actions=[{"email": {"to": ["a@b.example"]}}], repeat_every_s=60)),
    ("after_s", with_(escalate={"after_s": 0, "to": {"email": {"to": ["a@b.example"]}}})),
    ("escalate", with_(escalate={"after_s": 60, "to": {"alarm": {}}})),
    ("enabled", with_(enabled="yes")),
    ("colour", with_(colour="red")),
]


@pytest.mark.parametrize(("field", "document"), INVALID, ids=[f for f, _ in INVALID])
def test_an_invalid_document_names_the_field(field: str, document: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        Rule.model_validate(document)
    named = [
        ".".join(str(part) for part in error["loc"]) + " " + str(error["msg"])
        for error in caught.value.errors()
    ]
    assert any(field in text for text in named), named


def test_text_that_is_not_a_document_is_invalid() -> None:
    with pytest.raises(Invalid, match="not valid YAML"):
        load_rule("id: [", format="yaml")
    with pytest.raises(Invalid, match="an object"):
        load_rule("[1, 2]", format="json")


def test_yaml_base60_trap_is_refused_not_misread() -> None:
    text = "id: r\nname: r\nscope: {device: 12:34:56:12:34:56}\n"
    text += "condition: {no_data: {for_s: 60}}\nactions: [{alarm: {}}]\n"
    with pytest.raises(ValidationError, match="device"):
        load_rule(text, format="yaml")


def test_override_ids_are_canonical() -> None:
    rule = Rule.model_validate(with_(overrides={"3c-e9-0e-72-12-4c": {"above": 6}}))
    assert list(rule.overrides) == ["3C:E9:0E:72:12:4C"]


def test_scope_match() -> None:
    def match(scope: dict[str, Any], device: str, profile: str, attrs: dict[str, Any]) -> bool:
        return ScopeMatch(Scope.model_validate(scope)).matches(device, profile, attrs)

    assert match({"all": True}, "x", "native", {})
    assert match({"device": "3ce90e72124c"}, "3C:E9:0E:72:12:4C", "readings", {})
    assert not match({"devices": ["a", "b"]}, "c", "native", {})
    assert match({"profile": "readings"}, "x", "readings", {})
    assert not match({"profile": "readings"}, "x", "native", {})
    assert match({"attributes": {"room": "cold-1"}}, "x", "native", {"room": "cold-1", "z": 1})
    assert not match({"attributes": {"room": "cold-1"}}, "x", "native", {})
    assert not match({"attributes": {"smart": True}}, "x", "native", {"smart": 1})
