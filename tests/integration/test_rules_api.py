"""The rules, alarms and notification-log API against a real `fieldhub up` with authentication on:
roles (a viewer may not write a rule, an operator may acknowledge), a rule as YAML and as JSON,
422 naming the field, versions, enable/disable/delete, the preview over stored readings, an
alarm raised by the live engine from real ingest, acknowledged and cleared (409 for a refused
move), the audit entries, the live `alarm` frame over the WebSocket, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.sync.client import ClientConnection, connect

from support.auth import create_token
from support.fieldhub_process import FIELDHUB, FieldhubProcess, wait_until

DEVICE = "rules-dev-1"
OTHER = "rules-dev-2"
FRAME_TIMEOUT_S = 20.0

COLD_ROOM_YAML = f"""\
id: cold-room
name: Cold room above 8 °C
scope: {{device: {DEVICE}}}
condition:
  threshold: {{metric: temperature, above: 8.0, clear_below: 6.0}}
severity: major
actions:
  - alarm: {{}}
"""


def cold_room(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": "cold-room",
        "name": "Cold room above 8 °C",
        "scope": {"device": DEVICE},
        "condition": {"threshold": {"metric": "temperature", "above": 8.0, "clear_below": 6.0}},
        "severity": "major",
        "actions": [{"alarm": {}}],
    }
    document.update(changes)
    return document


@pytest.fixture(scope="module")
def fh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldhubProcess]:
    process = FieldhubProcess(data_dir=tmp_path_factory.mktemp("rules-api"), auth=True).start()
    try:
        yield process
    finally:
        assert process.stop() == 0


@pytest.fixture(scope="module")
def tokens(fh: FieldhubProcess) -> dict[str, str]:
    made = {
        role: str(create_token(fh.base_url, fh.admin_token, role=role)["token"])
        for role in ("viewer", "operator")
    }
    made["admin"] = fh.admin_token
    return made


class Api:
    """Calls as one role."""

    def __init__(self, fh: FieldhubProcess, token: str) -> None:
        self.client = httpx.Client(
            base_url=fh.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def put_rule(self, rule_id: str, body: str | dict[str, Any], media: str) -> httpx.Response:
        content = body if isinstance(body, str) else json.dumps(body)
        return self.client.put(
            f"/api/v1/rules/{rule_id}",
            content=content.encode(),
            headers={"Content-Type": media},
        )

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params)

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return self.client.post(path, json=body)


@pytest.fixture(scope="module")
def api(fh: FieldhubProcess, tokens: dict[str, str]) -> dict[str, Api]:
    return {role: Api(fh, token) for role, token in tokens.items()}


def post_readings(api: Api, device: str, entries: list[tuple[float, float]]) -> None:
    """Native telemetry over HTTP (an operator's right): (epoch s, temperature)."""
    body = [{"ts": round(ts * 1000), "values": {"temperature": value}} for ts, value in entries]
    response = api.client.post(
        "/api/v1/ingest/native",
        params={"topic": f"devices/{device}/telemetry"},
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text


def audit_actions(api: Api, action: str) -> list[dict[str, Any]]:
    response = api.get("/api/v1/audit", action=action)
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["data"]
    return entries


class Live:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + FRAME_TIMEOUT_S
        seen: list[dict[str, Any]] = []
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                frame: dict[str, Any] = orjson.loads(self.ws.recv(timeout=remaining))
            except TimeoutError:
                break
            seen.append(frame)
            if predicate(frame):
                return frame
        raise AssertionError(f"no {what} in {FRAME_TIMEOUT_S} s; frames: {seen[-10:]}")


def test_roles_on_rule_writes(api: dict[str, Api]) -> None:
    for role in ("viewer", "operator"):
        response = api[role].put_rule("cold-room", COLD_ROOM_YAML, "application/yaml")
        assert response.status_code == 403, (role, response.text)
        assert api[role].client.delete("/api/v1/rules/cold-room").status_code == 403
        assert api[role].post("/api/v1/rules/cold-room/disable").status_code == 403
        assert api[role].get("/api/v1/notifications").status_code == 403
    assert api["viewer"].post("/api/v1/rules/preview", {"rule": cold_room()}).status_code == 403
    assert api["viewer"].get("/api/v1/rules").status_code == 200
    assert api["viewer"].get("/api/v1/alarms").status_code == 200
    assert api["admin"].get("/api/v1/notifications").status_code == 200


def test_an_invalid_rule_is_422_naming_the_field(api: dict[str, Api]) -> None:
    admin = api["admin"]
    bad = cold_room(
        condition={"threshold": {"metric": "temperature", "above": 8.0, "clear_below": 9.0}}
    )
    response = admin.put_rule("bad-rule", {**bad, "id": "bad-rule"}, "application/json")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"].startswith("condition.threshold"), error
    assert "clear_below" in error["message"]
    response = admin.put_rule(
        "bad-rule", "id: bad-rule\nname: x\nscope: {profil: readings}\n", "application/yaml"
    )
    assert response.status_code == 422
    assert any("profil" in ".".join(d["loc"]) for d in response.json()["error"]["details"])
    response = admin.put_rule("bad-rule", "{not json", "application/json")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_rule_document"
    response = admin.put_rule("bad-rule", COLD_ROOM_YAML, "application/yaml")
    assert response.status_code == 422  # the document's id is not the path's
    assert "id" in response.json()["error"]["message"]
    assert admin.put_rule("bad-rule", "x", "text/plain").status_code == 415
    assert admin.get("/api/v1/rules/bad-rule").status_code == 404


def test_yaml_and_json_versions_enable_disable_and_audit(api: dict[str, Api]) -> None:
    admin, viewer = api["admin"], api["viewer"]
    first = admin.put_rule(
        "versioned", COLD_ROOM_YAML.replace("cold-room", "versioned"), "application/yaml"
    )
    assert first.status_code == 201, first.text
    assert first.json()["version"] == 1
    assert first.json()["document"]["scope"] == {"device": DEVICE}
    second = admin.put_rule(
        "versioned", cold_room(id="versioned", severity="critical"), "application/json"
    )
    assert second.status_code == 200, second.text
    assert second.json()["version"] == 2
    # The id may be left out: it is the path's.
    third = admin.put_rule(
        "versioned", {k: v for k, v in cold_room().items() if k != "id"}, "application/json"
    )
    assert third.status_code == 200, third.text
    assert third.json()["version"] == 3

    current = viewer.get("/api/v1/rules/versioned").json()
    assert current["version"] == 3
    assert current["author"].startswith("token:")  # the admin's API token
    versions = viewer.get("/api/v1/rules/versioned/versions").json()["data"]
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert (
        viewer.get("/api/v1/rules/versioned/versions/2").json()["document"]["severity"]
        == "critical"
    )
    assert viewer.get("/api/v1/rules/versioned/versions/9").status_code == 404
    assert "versioned" in [r["id"] for r in viewer.get("/api/v1/rules").json()["data"]]

    disabled = admin.post("/api/v1/rules/versioned/disable")
    assert disabled.status_code == 200, disabled.text
    assert (disabled.json()["version"], disabled.json()["enabled"]) == (4, False)
    enabled = admin.post("/api/v1/rules/versioned/enable")
    assert (enabled.json()["version"], enabled.json()["enabled"]) == (5, True)

    assert admin.client.delete("/api/v1/rules/versioned").status_code == 204
    assert viewer.get("/api/v1/rules/versioned").status_code == 404
    assert len(viewer.get("/api/v1/rules/versioned/versions").json()["data"]) == 5
    assert admin.client.delete("/api/v1/rules/versioned").status_code == 404
    again = admin.put_rule("versioned", cold_room(id="versioned"), "application/json")
    assert (again.status_code, again.json()["version"]) == (201, 6)

    applied = [e for e in audit_actions(admin, "rule.apply") if e["target"] == "rule:versioned"]
    assert [e["detail"]["version"] for e in applied] == [6, 3, 2, 1]  # newest first
    deletes = [e for e in audit_actions(admin, "rule.delete") if e["target"] == "rule:versioned"]
    assert [e["outcome"] for e in deletes] == ["failed", "ok"]
    assert audit_actions(admin, "rule.disable")[0]["target"] == "rule:versioned"
    assert admin.client.delete("/api/v1/rules/versioned").status_code == 204  # not in the way


def test_preview_over_stored_readings(api: dict[str, Api]) -> None:
    now = round(time.time())  # whole seconds: readings and the window on exact microseconds
    start = now - 3600
    post_readings(
        api["operator"],
        OTHER,
        [(start + 60, 5.0), (start + 120, 9.0), (start + 180, 9.5), (start + 240, 7.0),
         (start + 300, 5.0), (start + 360, 10.0)],
    )  # fmt: skip
    rule = cold_room(id="preview-me", scope={"device": OTHER})
    response = api["operator"].post(
        "/api/v1/rules/preview", {"rule": rule, "start": start, "end": now}
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["data"]
    assert result["device"] == OTHER
    spans = [(s["fired_us"], s["cleared_us"]) for s in result["spans"]]
    us = start * 1_000_000
    assert spans == [(us + 120_000_000, us + 300_000_000), (us + 360_000_000, None)]
    assert [a["kind"] for a in result["actions"]] == ["alarm", "alarm", "alarm"]
    # YAML text works too; the rule need not be stored, and nothing was.
    yaml_text = COLD_ROOM_YAML.replace(DEVICE, OTHER)
    response = api["operator"].post(
        "/api/v1/rules/preview", {"rule": yaml_text, "start": start, "end": now}
    )
    assert [s["fired_us"] for s in response.json()["data"][0]["spans"]] == [s[0] for s in spans]
    assert api["operator"].get("/api/v1/rules/preview-me").status_code == 404
    bad = api["operator"].post("/api/v1/rules/preview", {"rule": cold_room(severity="loud")})
    assert bad.status_code == 422
    assert bad.json()["error"]["message"].startswith("rule.severity")


def test_an_alarm_is_raised_acknowledged_and_cleared_live(
    fh: FieldhubProcess, api: dict[str, Api], tokens: dict[str, str]
) -> None:
    admin, operator, viewer = api["admin"], api["operator"], api["viewer"]
    assert admin.put_rule("cold-room", COLD_ROOM_YAML, "application/yaml").status_code in (200, 201)
    url = fh.base_url.replace("http://", "ws://") + "/api/v1/live"
    with connect(
        url,
        proxy=None,
        open_timeout=10,
        additional_headers={"Authorization": f"Bearer {tokens['viewer']}"},
    ) as ws:
        live = Live(ws)
        ws.send(
            orjson.dumps({"op": "subscribe", "devices": [DEVICE], "events": ["alarms"]}).decode()
        )
        live.wait_for(lambda f: f["type"] == "subscribed", "subscribed")
        now = time.time()
        post_readings(operator, DEVICE, [(now - 2, 5.0), (now - 1, 9.0)])
        raised = live.wait_for(lambda f: f["type"] == "alarm", "alarm frame")["alarm"]
        assert (raised["rule"], raised["device"], raised["state"]) == (
            "cold-room",
            DEVICE,
            "active",
        )
        assert raised["severity"] == "major"
        alarm_id = raised["id"]

        listed = viewer.get("/api/v1/alarms", state="open", rule="cold-room").json()["data"]
        assert [a["id"] for a in listed] == [alarm_id]
        assert viewer.get("/api/v1/alarms", state="cleared", rule="cold-room").json()["data"] == []

        path = f"/api/v1/alarms/{alarm_id}"
        assert viewer.post(f"{path}/acknowledge", {"comment": "no"}).status_code == 403
        acked = operator.post(f"{path}/acknowledge", {"comment": "door was open"})
        assert acked.status_code == 200, acked.text
        assert acked.json()["state"] == "acknowledged"
        assert acked.json()["ack_comment"] == "door was open"
        frame = live.wait_for(lambda f: f["type"] == "alarm", "acknowledged frame")["alarm"]
        assert (frame["id"], frame["state"]) == (alarm_id, "acknowledged")
        refused = operator.post(f"{path}/acknowledge", {})
        assert refused.status_code == 409, refused.text

        cleared = operator.post(f"{path}/clear", None)
        assert cleared.status_code == 200, cleared.text
        assert cleared.json()["state"] == "cleared"
        frame = live.wait_for(lambda f: f["type"] == "alarm", "cleared frame")["alarm"]
        assert frame["state"] == "cleared"
        assert operator.post(f"{path}/clear", {}).status_code == 409
        assert operator.post("/api/v1/alarms/no-such-alarm/clear", {}).status_code == 404

    detail = viewer.get(path).json()
    assert [e["state"] for e in detail["events"]] == ["active", "acknowledged", "cleared"]
    assert detail["events"][0]["actor"] == "rule:cold-room"
    assert detail["events"][1]["comment"] == "door was open"
    acks = [
        e for e in audit_actions(admin, "alarm.acknowledge") if e["target"] == f"alarm:{alarm_id}"
    ]
    assert [e["outcome"] for e in acks] == ["failed", "ok"]
    clears = [e for e in audit_actions(admin, "alarm.clear") if e["target"] == f"alarm:{alarm_id}"]
    assert [e["outcome"] for e in clears] == ["failed", "ok"]
    assert clears[1]["actor"].startswith("token:")


def fieldhub_cli(fh: FieldhubProcess, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FIELDHUB_TOKEN": token}
    return subprocess.run(
        [str(FIELDHUB), *args, "--url", fh.base_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_apply_list_show_preview_delete(
    fh: FieldhubProcess, tokens: dict[str, str], tmp_path: Path
) -> None:
    good = tmp_path / "cli-rule.yaml"
    good.write_text(COLD_ROOM_YAML.replace("cold-room", "cli-rule"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cold_room(id="cli-bad", severity="loud")))
    refused = fieldhub_cli(fh, tokens["admin"], "rules", "apply", str(good), str(bad))
    assert refused.returncode == 2
    assert "severity" in refused.stderr
    assert "cli-rule" not in fieldhub_cli(fh, tokens["viewer"], "rules", "list").stdout

    as_viewer = fieldhub_cli(fh, tokens["viewer"], "rules", "apply", str(good))
    assert as_viewer.returncode == 2
    assert "403" in as_viewer.stderr
    applied = fieldhub_cli(fh, tokens["admin"], "rules", "apply", str(good))
    assert applied.returncode == 0, applied.stderr
    assert "cli-rule: version 1" in applied.stdout
    listed = fieldhub_cli(fh, tokens["viewer"], "rules", "list")
    assert "cli-rule" in listed.stdout
    shown = fieldhub_cli(fh, tokens["viewer"], "rules", "show", "cli-rule")
    assert shown.returncode == 0, shown.stderr
    again = tmp_path / "again.yaml"
    again.write_text(shown.stdout)
    reapplied = fieldhub_cli(fh, tokens["admin"], "rules", "apply", str(again))
    assert "cli-rule: version 2" in reapplied.stdout, reapplied.stderr
    previewed = fieldhub_cli(fh, tokens["operator"], "rules", "preview", str(good), "--since", "2h")
    assert previewed.returncode == 0, previewed.stderr
    assert DEVICE in previewed.stdout
    deleted = fieldhub_cli(fh, tokens["admin"], "rules", "delete", "cli-rule")
    assert deleted.returncode == 0, deleted.stderr
    listed = fieldhub_cli(fh, tokens["viewer"], "alarms", "list", "--all")
    assert listed.returncode == 0, listed.stderr


def test_alarm_cli_ack_and_clear(
    fh: FieldhubProcess, api: dict[str, Api], tokens: dict[str, str]
) -> None:
    rule = cold_room(id="cli-alarm", scope={"device": "rules-dev-3"})
    assert api["admin"].put_rule("cli-alarm", rule, "application/json").status_code == 201
    post_readings(api["operator"], "rules-dev-3", [(time.time() - 1, 12.0)])

    def open_alarm() -> str | None:
        data = api["viewer"].get("/api/v1/alarms", rule="cli-alarm", state="open").json()["data"]
        return str(data[0]["id"]) if data else None

    alarm_id = wait_until(open_alarm, what="the cli-alarm alarm")
    listed = fieldhub_cli(fh, tokens["viewer"], "alarms", "list", "--rule", "cli-alarm")
    assert alarm_id in listed.stdout
    acked = fieldhub_cli(fh, tokens["operator"], "alarms", "ack", alarm_id, "--comment", "seen")
    assert acked.returncode == 0, acked.stderr
    assert "acknowledged" in acked.stdout
    twice = fieldhub_cli(fh, tokens["operator"], "alarms", "ack", alarm_id)
    assert twice.returncode == 2
    assert "409" in twice.stderr
    cleared = fieldhub_cli(fh, tokens["operator"], "alarms", "clear", alarm_id)
    assert cleared.returncode == 0, cleared.stderr
    assert "cleared" in cleared.stdout
