"""Commands from the device page, in a real browser, to a simulated native device over MQTT.

The operator's view of docs/commands.md: the device page lists the commands the device accepts,
sends one with a click, and shows its state move through the lifecycle live; params the API
refuses are reported with the API's own message and create nothing. A command for an offline
device waits in `pending`, where its row offers a Cancel button; a device of a stack that takes
no commands gets no buttons. The page is read only through its DOM contract:
`form.command[data-command]` per command, rows `tr[data-command-id]` whose state cell carries
`data-state` and, while pending, a `button.cancel`; cancel errors in `#command-log-error`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from playwright.sync_api import Page, Response, Route, expect

from support.browser import Shoot
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all
from support.sim_devices import SimDevice

SimDeviceFactory = Callable[[str], SimDevice]

# A page loads and its WebSocket subscribes within this (see test_dashboard.py).
PAGE_MS = 15_000
# A native command is acked in milliseconds on loopback; the rest is headroom for a busy box.
ACK_MS = 10_000

# How long a command for an offline device is watched staying pending: a command wrongly sent
# to it would be `sent` within milliseconds (the broker acknowledges the publish at once).
HOLD_MS = 1_000

FINAL_STATES = {"succeeded", "failed", "timed_out", "expired", "cancelled"}
LIFECYCLE = ["pending", "sent", "succeeded"]
CANCELLED = ["pending", "cancelled"]

# The Flask gateway stack's firmware message (readings profile), byte for byte: that stack has
# no command topic, so fieldhub knows no command format for it.
GATEWAY_MAC = "3C:E9:0E:72:12:4C"
GATEWAY_TOPIC = f"/readings/gateway/{GATEWAY_MAC}"
GATEWAY_PAYLOAD = b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":93387, "rssi":65}'

# Records, per command id, every state its row's state cell showed, in order. The observer is
# installed before the click, so it sees the row's first state. An attribute record's oldValue
# is the value before that change: a state that was set and replaced within one task (never
# painted, but still shown by the DOM) is recorded too.
RECORD_STATES = """() => {
  window.__statesObserver?.disconnect();
  window.__states = {};
  const tbody = document.querySelector("#command-log tbody");
  const push = (id, state) => {
    if (!id || !state) return;
    const seen = (window.__states[id] ||= []);
    if (seen[seen.length - 1] !== state) seen.push(state);
  };
  const idOf = (el) => el.closest && el.closest("tr[data-command-id]")?.dataset.commandId;
  window.__statesObserver = new MutationObserver((records) => {
    const touched = new Set();
    for (const r of records) {
      if (r.type === "attributes") {
        push(idOf(r.target), r.oldValue);
        touched.add(idOf(r.target));
      } else {
        for (const n of r.addedNodes) {
          if (n.nodeType === 1 && n.matches("tr[data-command-id]")) {
            touched.add(n.dataset.commandId);
          }
        }
      }
    }
    for (const id of touched) {
      if (!id) continue;
      const row = tbody.querySelector(`tr[data-command-id="${CSS.escape(id)}"]`);
      const cell = row && row.querySelector("[data-state]");
      if (cell) push(id, cell.dataset.state);
    }
  });
  window.__statesObserver.observe(tbody, {
    subtree: true, childList: true, attributes: true,
    attributeFilter: ["data-state"], attributeOldValue: true,
  });
}"""
READ_STATES = "(id) => (window.__states && window.__states[id]) || []"


@dataclass(frozen=True)
class Followed:
    """A command sent from the page: its id, the state the POST answered with, and every state
    its row showed, in order."""

    id: str
    answered: str
    shown: list[str]


def open_live(page: Page, path: str) -> None:
    """Go to `path` and wait until its WebSocket subscription is confirmed."""
    response = page.goto(path)
    assert response is not None, f"no response for {path}"
    assert response.ok, f"GET {path} -> {response.status}"
    expect(page.locator("body")).to_have_attribute("data-live", "connected", timeout=PAGE_MS)


def native_device(fh: FieldhubProcess, sim_device: SimDeviceFactory, name: str) -> SimDevice:
    """A started simulated native device that fieldhub knows, with its command format learnt."""
    device = sim_device(name)
    device.publish()

    def format_known() -> str | None:
        response = fh.get(f"/api/v1/devices/{device.id}/command-types")
        return response.json().get("format") if response.status_code == 200 else None

    wait_until(
        lambda: format_known() == "native", what=f"{device.id} to be known as a native device"
    )
    return device


def offline_native_device(
    fh: FieldhubProcess, sim_device: SimDeviceFactory, name: str
) -> SimDevice:
    """A native device fieldhub knew, then lost: it crashed, and the broker published its
    retained offline will. Commands for it wait in `pending`."""
    device = native_device(fh, sim_device, name)
    device.crash()

    def presence() -> str | None:
        response = fh.get(f"/api/v1/devices/{device.id}")
        return response.json().get("presence") if response.status_code == 200 else None

    wait_until(lambda: presence() == "offline", what=f"{device.id} to be offline")
    return device


def commands_of(fh: FieldhubProcess, device: SimDevice) -> list[dict[str, Any]]:
    response = fh.get(f"/api/v1/devices/{device.id}/commands", limit=100)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def stored_command(fh: FieldhubProcess, device: SimDevice, command_id: str) -> dict[str, Any]:
    response = fh.get(f"/api/v1/devices/{device.id}/commands/{command_id}")
    assert response.status_code == 200, response.text
    command: dict[str, Any] = response.json()
    return command


def assert_shown_lifecycle(followed: Followed, stored: dict[str, Any]) -> None:
    """The row showed exactly the stored lifecycle: `pending` (drawn from the POST's answer,
    which is the command as accepted), then `sent` and `succeeded` from live frames (one frame
    per stored transition, even when an ack implied `sent` in the same write)."""
    history = stored["history"]
    assert [h["state"] for h in history] == LIFECYCLE, history
    assert followed.answered == "pending", f"the POST answered {followed.answered}"
    assert followed.shown == LIFECYCLE, f"the row showed {followed.shown}, not {LIFECYCLE}"


def is_command_post(response: Response) -> bool:
    return response.request.method == "POST" and response.url.endswith("/commands")


def is_command_delete(response: Response) -> bool:
    return response.request.method == "DELETE" and "/commands/" in response.url


def send_pending(page: Page, form_name: str) -> str:
    """Click the command's button; return its id once its row shows it pending (the device is
    offline, so pending is where it stays)."""
    button = page.locator(f'form.command[data-command="{form_name}"] button[type=submit]')
    with page.expect_response(is_command_post, timeout=PAGE_MS) as answer:
        button.click()
    response = answer.value
    assert response.status == 201, f"POST -> {response.status}: {response.text()}"
    command = response.json()
    assert command["state"] == "pending", command
    command_id: str = command["id"]
    row = page.locator(f'#command-log tr[data-command-id="{command_id}"]')
    expect(row.locator("td.state")).to_have_attribute("data-state", "pending", timeout=PAGE_MS)
    return command_id


def send_and_follow(page: Page, form_name: str) -> Followed:
    """Click the command's button; wait for its row to reach a final state."""
    page.evaluate(RECORD_STATES)
    button = page.locator(f'form.command[data-command="{form_name}"] button[type=submit]')
    with page.expect_response(is_command_post, timeout=PAGE_MS) as answer:
        button.click()
    response = answer.value
    assert response.status == 201, f"POST -> {response.status}: {response.text()}"
    command = response.json()
    command_id: str = command["id"]

    row = page.locator(f'#command-log tr[data-command-id="{command_id}"]')
    expect(row).to_have_count(1, timeout=PAGE_MS)
    page.wait_for_function(
        """([id, finals]) => {
            const seen = (window.__states && window.__states[id]) || [];
            return finals.includes(seen[seen.length - 1]);
        }""",
        arg=[command_id, sorted(FINAL_STATES)],
        timeout=ACK_MS,
    )
    shown: list[str] = page.evaluate(READ_STATES, command_id)
    return Followed(id=command_id, answered=command["state"], shown=shown)


def test_ping_from_the_device_page_goes_pending_sent_succeeded(
    page: Page, sim_device: SimDeviceFactory, live_fieldhub: FieldhubProcess, shoot: Shoot
) -> None:
    """Click `ping`: the row appears pending at once, then follows the command live to
    `succeeded`, decided by the device's acknowledgement."""
    device = native_device(live_fieldhub, sim_device, "ping")
    open_live(page, f"/devices/{device.id}")
    forms = page.locator("form.command[data-command]")
    expect(page.locator('form.command[data-command="ping"]')).to_have_count(1, timeout=PAGE_MS)
    names = set(forms.evaluate_all("fs => fs.map(f => f.dataset.command)"))
    assert {"ping", "set_window", "set_interval", "reboot"} <= names, names
    # set_window's schema has a bounded position: the form offers a number input with its bounds.
    position = page.locator('form.command[data-command="set_window"] input[name="position"]')
    expect(position).to_have_attribute("type", "number")
    expect(position).to_have_attribute("min", "0")
    expect(position).to_have_attribute("max", "100")
    expect(page.locator('form.command[data-command="ping"] [data-param]')).to_have_count(0)
    shoot(page, "g1-device-commands")

    followed = send_and_follow(page, "ping")
    command_id = followed.id
    stored = stored_command(live_fieldhub, device, command_id)
    assert_shown_lifecycle(followed, stored)
    row = page.locator(f'#command-log tr[data-command-id="{command_id}"]')
    expect(row.locator("td.state")).to_have_attribute("data-state", "succeeded")
    expect(row.locator("td.state")).to_have_text("succeeded")
    expect(row.locator("td.name")).to_have_text("ping")
    expect(row.locator("td.outcome .decided-by")).to_have_text("ack")

    assert stored["decided_by"] == "ack"
    shoot(page, "g2-device-command-succeeded")

    # A reload reads the same row back from the API.
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-live", "connected", timeout=PAGE_MS)
    expect(row.locator("td.state")).to_have_attribute("data-state", "succeeded", timeout=PAGE_MS)


def test_set_window_moves_the_window_and_bad_params_show_the_api_error(
    page: Page, sim_device: SimDeviceFactory, live_fieldhub: FieldhubProcess, shoot: Shoot
) -> None:
    """`set_window` with a position from the form reaches the device and succeeds; a position
    out of range is refused by the API, whose message the page shows, and creates no command."""
    device = native_device(live_fieldhub, sim_device, "window")
    open_live(page, f"/devices/{device.id}")
    form = page.locator('form.command[data-command="set_window"]')
    expect(form).to_have_count(1, timeout=PAGE_MS)
    position = form.locator('input[name="position"]')
    error = form.locator(".command-error")

    position.fill("40")
    followed = send_and_follow(page, "set_window")
    command_id = followed.id
    stored = stored_command(live_fieldhub, device, command_id)
    assert_shown_lifecycle(followed, stored)
    row = page.locator(f'#command-log tr[data-command-id="{command_id}"]')
    expect(row.locator("td.params")).to_have_text('{"position":40}')
    assert stored["params"] == {"position": 40}
    assert stored["result"]["position"] == device.device.window_position
    shown_result = json.dumps(stored["result"], separators=(",", ":"))
    expect(row.locator("td.outcome .result")).to_have_text(f"result {shown_result}")
    expect(error).to_be_hidden()

    before = [c["id"] for c in commands_of(live_fieldhub, device)]
    rows_before = page.locator("#command-log tbody tr").count()
    position.fill("150")
    with page.expect_response(is_command_post, timeout=PAGE_MS) as answer:
        form.locator("button[type=submit]").click()
    response = answer.value
    assert 400 <= response.status < 500, f"position 150 -> {response.status}: {response.text()}"
    message = response.json()["error"]["message"]
    assert message, response.text()
    expect(error).to_be_visible(timeout=PAGE_MS)
    expect(error).to_have_text(message)
    shoot(page, "g3-device-command-refused")

    after = [c["id"] for c in commands_of(live_fieldhub, device)]
    assert after == before, "a refused command was stored"
    expect(page.locator("#command-log tbody tr")).to_have_count(rows_before)
    assert device.device.window_position == stored["result"]["position"]


def test_a_command_for_an_offline_device_stays_pending_until_cancelled(
    page: Page, sim_device: SimDeviceFactory, live_fieldhub: FieldhubProcess, shoot: Shoot
) -> None:
    """`ping` to a crashed device: the row stays pending with a Cancel button; Cancel sends
    DELETE, the row shows `cancelled` and loses its button, and the API says the cancel
    decided it."""
    device = offline_native_device(live_fieldhub, sim_device, "offline")
    open_live(page, f"/devices/{device.id}")
    expect(page.locator("#presence")).to_have_attribute("data-state", "offline")
    expect(page.locator('form.command[data-command="ping"]')).to_have_count(1, timeout=PAGE_MS)
    page.evaluate(RECORD_STATES)

    command_id = send_pending(page, "ping")
    row = page.locator(f'#command-log tr[data-command-id="{command_id}"]')
    cancel = row.locator("button.cancel")
    expect(cancel).to_have_count(1)
    expect(cancel).to_have_text("Cancel")
    page.wait_for_timeout(HOLD_MS)
    expect(row.locator("td.state")).to_have_attribute("data-state", "pending")
    assert stored_command(live_fieldhub, device, command_id)["state"] == "pending"
    shoot(page, "g4-device-command-pending")

    with page.expect_response(is_command_delete, timeout=PAGE_MS) as answer:
        cancel.click()
    response = answer.value
    assert response.url.endswith(f"/api/v1/devices/{device.id}/commands/{command_id}")
    assert response.status == 200, f"DELETE -> {response.status}: {response.text()}"
    assert response.json()["state"] == "cancelled", response.text()

    expect(row.locator("td.state")).to_have_attribute("data-state", "cancelled", timeout=PAGE_MS)
    expect(row.locator("td.state")).to_have_text("cancelled")
    expect(row.locator("td.outcome .decided-by")).to_have_text("cancel")
    expect(cancel).to_have_count(0)
    expect(page.locator("#command-log-error")).to_be_hidden()

    stored = stored_command(live_fieldhub, device, command_id)
    assert stored["state"] == "cancelled", stored
    assert stored["decided_by"] == "cancel", stored
    assert [h["state"] for h in stored["history"]] == CANCELLED, stored["history"]
    shown: list[str] = page.evaluate(READ_STATES, command_id)
    assert shown == CANCELLED, f"the row showed {shown}"
    shoot(page, "g5-device-command-cancelled")

    # A reload reads the cancelled row back, without a button.
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-live", "connected", timeout=PAGE_MS)
    expect(row.locator("td.state")).to_have_attribute("data-state", "cancelled", timeout=PAGE_MS)
    expect(cancel).to_have_count(0)


def test_cancel_buttons_follow_live_frames_and_a_late_cancel_is_harmless(
    page: Page, sim_device: SimDeviceFactory, live_fieldhub: FieldhubProcess
) -> None:
    """A command cancelled elsewhere loses its Cancel button through its live frame alone. A
    Cancel click that arrives after another client cancelled the command gets 200 (DELETE of a
    cancelled command is idempotent): no error is shown and the row ends `cancelled`."""
    device = offline_native_device(live_fieldhub, sim_device, "race")
    open_live(page, f"/devices/{device.id}")
    expect(page.locator('form.command[data-command="ping"]')).to_have_count(1, timeout=PAGE_MS)
    page.evaluate(RECORD_STATES)
    first = send_pending(page, "ping")
    second = send_pending(page, "ping")
    url = f"{live_fieldhub.base_url}/api/v1/devices/{device.id}/commands"

    # Cancelled by another client: only the live frame tells the page.
    deleted = httpx.delete(f"{url}/{first}", timeout=10.0)
    assert deleted.status_code == 200, deleted.text
    first_row = page.locator(f'#command-log tr[data-command-id="{first}"]')
    expect(first_row.locator("td.state")).to_have_attribute(
        "data-state", "cancelled", timeout=PAGE_MS
    )
    expect(first_row.locator("button.cancel")).to_have_count(0)

    # The page's DELETE reaches the API only after another client's: still 200.
    def cancelled_elsewhere_first(route: Route) -> None:
        if route.request.method == "DELETE":
            other = httpx.delete(f"{url}/{second}", timeout=10.0)
            assert other.status_code == 200, other.text
        route.continue_()

    page.route(f"**/api/v1/devices/{device.id}/commands/{second}", cancelled_elsewhere_first)
    second_row = page.locator(f'#command-log tr[data-command-id="{second}"]')
    with page.expect_response(is_command_delete, timeout=PAGE_MS) as answer:
        second_row.locator("button.cancel").click()
    response = answer.value
    assert response.status == 200, f"DELETE -> {response.status}: {response.text()}"
    assert response.json()["state"] == "cancelled"
    expect(page.locator("#command-log-error")).to_be_hidden()
    expect(second_row.locator("td.state")).to_have_attribute(
        "data-state", "cancelled", timeout=PAGE_MS
    )
    expect(second_row.locator("button.cancel")).to_have_count(0)
    for command_id in (first, second):
        shown: list[str] = page.evaluate(READ_STATES, command_id)
        assert shown == CANCELLED, f"{command_id}: the row showed {shown}"


def test_a_device_without_a_command_format_gets_no_command_buttons(
    page: Page, mqtt_url: str, live_fieldhub: FieldhubProcess
) -> None:
    """A Flask gateway (readings profile) has no command topic: its device page says it accepts
    no commands and offers no command buttons."""
    publisher = connected_publisher(mqtt_url)
    try:
        publish_all(publisher, [(GATEWAY_TOPIC, GATEWAY_PAYLOAD)], retain=True)
    finally:
        publisher.stop()

    def profile() -> str | None:
        response = live_fieldhub.get(f"/api/v1/devices/{GATEWAY_MAC}")
        return response.json().get("profile") if response.status_code == 200 else None

    wait_until(lambda: profile() == "readings", what=f"{GATEWAY_MAC} to be a readings device")
    types = live_fieldhub.get(f"/api/v1/devices/{GATEWAY_MAC}/command-types")
    assert types.status_code == 200, types.text
    assert types.json()["format"] is None, types.text

    open_live(page, f"/devices/{GATEWAY_MAC}")
    note = page.locator("#command-types #no-command-types")
    expect(note).to_have_text("This device accepts no commands.", timeout=PAGE_MS)
    expect(page.locator("#command-types form.command")).to_have_count(0)
    expect(page.locator("#commands button")).to_have_count(0)
    expect(page.locator("#command-log tbody tr")).to_have_count(0)
    expect(page.locator("#no-commands")).to_be_visible()
