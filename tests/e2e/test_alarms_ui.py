"""The alarms page in a real browser, against `fieldhub up` with authentication on.

A threshold rule is applied through the API (admin token); a device publishes over MQTT (an
external Mosquitto where devices publish anonymously) first a normal reading, then one above the
threshold. An operator signed in through the login page sees the alarm appear live on /alarms,
acknowledges it with a comment from the page and sees the row turn `acknowledged` with who and
the comment, then clears it. A viewer watching the same page at the same time sees each move
arrive live, and has no buttons; the fleet page's badge and the device page's open alarms
follow the alarm too.

The pages are read through their DOM contract: rows `#alarms tr[data-alarm]` with `data-state`,
`data-device`, `data-rule`; `.acked-by`, `.ack-comment`, `.cleared-by`; `td.actions` with
`input.comment`, `button.ack`, `button.clear` (operators only); `#nav-alarms`; the fleet row's
`.alarm-count` and the `#count-alarms` total.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from fieldhub.broker import MosquittoProcess
from support.auth import ADMIN_USERNAME
from support.browser import DESKTOP, Shoot
from support.e2e_fieldhub import add_users, admin_client, authed_fieldhub
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all

# A page loads and its WebSocket subscribes within this (see test_dashboard.py).
PAGE_MS = 15_000
# Reading published -> committed -> rule evaluated -> alarm frame: milliseconds on loopback;
# the rest is headroom for a busy box.
ALARM_MS = 15_000

RULE = "e2e-cold-room"
OPERATOR = "olga"
VIEWER = "vic"
COMMENT = "door was left open, closed it"


@pytest.fixture(scope="module")
def live_fieldhub(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoProcess
) -> Iterator[FieldhubProcess]:
    with authed_fieldhub(tmp_path_factory.mktemp("e2e-alarms"), mosquitto.url) as fh:
        yield fh


@pytest.fixture(scope="module")
def admin_api(live_fieldhub: FieldhubProcess) -> Iterator[httpx.Client]:
    with admin_client(live_fieldhub) as client:
        yield client


@pytest.fixture(scope="module")
def passwords(admin_api: httpx.Client) -> dict[str, str]:
    """An operator and a viewer, added by the admin through the API."""
    return add_users(admin_api, {OPERATOR: "operator", VIEWER: "viewer"})


@pytest.fixture(scope="module")
def device(admin_api: httpx.Client) -> str:
    """A device id with a cold-room rule on it: above 8 °C raises, below 6 °C clears."""
    device_id = f"e2e-fridge-{uuid.uuid4().hex[:6]}"
    rule = {
        "id": RULE,
        "name": "Cold room above 8 °C",
        "scope": {"device": device_id},
        "condition": {"threshold": {"metric": "temperature", "above": 8.0, "clear_below": 6.0}},
        "severity": "critical",
        # The MQTT publish is logged in the notification log (the admin's page shows it).
        "actions": [
            {"alarm": {}},
            {"mqtt": {"topic": "e2e/alarms/$device_id", "payload": "$value"}},
        ],
    }
    answer = admin_api.put(
        f"/api/v1/rules/{RULE}",
        content=orjson.dumps(rule),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 201, answer.text
    return device_id


def publish_temperature(mqtt_url: str, device_id: str, value: float) -> None:
    """One native telemetry message, QoS 1, acknowledged by the broker."""
    publisher = connected_publisher(mqtt_url)
    try:
        payload = orjson.dumps({"v": 1, "ts": round(time.time() * 1000), "temperature": value})
        publish_all(publisher, [(f"devices/{device_id}/telemetry", payload)])
    finally:
        publisher.stop()


def log_in(page: Page, path: str, username: str, password: str, *, live: bool = True) -> None:
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.locator('#login-form input[name="username"]').fill(username)
    page.locator('#login-form input[name="password"]').fill(password)
    page.locator('#login-form button[type="submit"]').click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"), timeout=PAGE_MS)
    if live:
        expect(page.locator("body")).to_have_attribute("data-live", "connected", timeout=PAGE_MS)


def rule_page_ready(page: Page) -> None:
    """rule.js has run (its handlers are on the form and the save button): a click before that
    would submit the form as a plain GET."""
    page.wait_for_function("() => window.fieldhub !== undefined", timeout=PAGE_MS)


@pytest.fixture
def admin_context(browser: Browser, live_fieldhub: FieldhubProcess) -> Iterator[BrowserContext]:
    """A third browser, for the admin."""
    context = browser.new_context(base_url=live_fieldhub.base_url, viewport=DESKTOP)
    yield context
    context.close()


@pytest.fixture
def viewer_context(browser: Browser, live_fieldhub: FieldhubProcess) -> Iterator[BrowserContext]:
    """Another browser (its own cookies) for the viewer, watching at the same time."""
    context = browser.new_context(base_url=live_fieldhub.base_url, viewport=DESKTOP)
    yield context
    context.close()


def test_alarm_raised_acknowledged_and_cleared_live(
    page: Page,
    viewer_context: BrowserContext,
    admin_context: BrowserContext,
    live_fieldhub: FieldhubProcess,
    admin_api: httpx.Client,
    passwords: dict[str, str],
    device: str,
    shoot: Shoot,
) -> None:
    mqtt_url = live_fieldhub.mqtt_url
    assert mqtt_url is not None
    # The device exists (a normal reading) before anyone looks, so the fleet page lists it.
    publish_temperature(mqtt_url, device, 5.0)
    wait_until(
        lambda: admin_api.get(f"/api/v1/devices/{device}").status_code == 200,
        what=f"{device} to be known",
    )

    log_in(page, "/alarms", OPERATOR, passwords[OPERATOR])
    expect(page.locator("#nav-alarms")).to_have_attribute("aria-current", "page")
    expect(page.locator("#alarms-empty")).to_be_visible()

    viewer = viewer_context.new_page()
    log_in(viewer, "/alarms", VIEWER, passwords[VIEWER])
    fleet = viewer_context.new_page()
    fleet.goto("/")
    expect(fleet.locator("body")).to_have_attribute("data-live", "connected", timeout=PAGE_MS)
    badge = fleet.locator(f'#fleet tr[data-device="{device}"] .alarm-count')
    expect(badge).to_be_hidden()

    # Above 8 °C: the alarm appears on both open pages without a reload.
    publish_temperature(mqtt_url, device, 9.5)
    row = page.locator(f'#alarms tr[data-device="{device}"][data-rule="{RULE}"]')
    expect(row).to_have_attribute("data-state", "active", timeout=ALARM_MS)
    expect(row.locator(".severity-tag")).to_have_text("critical")
    expect(row.locator("td.device a")).to_have_attribute("href", f"/devices/{device}")
    expect(page.locator("#alarms-empty")).to_be_hidden()
    viewer_row = viewer.locator(f'#alarms tr[data-device="{device}"]')
    expect(viewer_row).to_have_attribute("data-state", "active", timeout=ALARM_MS)
    # A viewer gets no buttons; the API would refuse them anyway.
    expect(viewer.locator("#alarms td.actions")).to_have_count(0)
    expect(viewer.locator("#alarms button")).to_have_count(0)
    expect(badge).to_have_text("1", timeout=ALARM_MS)
    shoot(page, "alarms-active")

    # Acknowledged with a comment from the page: both pages show who and why.
    row.locator("input.comment").fill(COMMENT)
    with page.expect_response(lambda r: r.url.endswith("/acknowledge")) as answer:
        row.locator("button.ack").click()
    assert answer.value.status == 200, answer.value.text()
    for watcher in (row, viewer_row):
        expect(watcher).to_have_attribute("data-state", "acknowledged", timeout=ALARM_MS)
        expect(watcher.locator(".acked-by")).to_have_text(OPERATOR)
        expect(watcher.locator(".ack-comment")).to_have_text(COMMENT)
    expect(row.locator("button.ack")).to_be_hidden()
    expect(row.locator("button.clear")).to_be_visible()
    # Still open: the badge stays.
    expect(badge).to_have_text("1")
    shoot(page, "alarms-acknowledged")

    # The device page lists it among its open alarms.
    device_page = viewer_context.new_page()
    device_page.goto(f"/devices/{device}")
    device_row = device_page.locator("#alarms tr[data-alarm]")
    expect(device_row).to_have_count(1)
    expect(device_row).to_have_attribute("data-state", "acknowledged")
    expect(device_page.locator("body")).to_have_attribute("data-live", "connected", timeout=PAGE_MS)

    # Cleared by hand: cleared everywhere, the badge goes, the device page lists nothing open.
    with page.expect_response(lambda r: r.url.endswith("/clear")) as answer:
        row.locator("button.clear").click()
    assert answer.value.status == 200, answer.value.text()
    for watcher in (row, viewer_row):
        expect(watcher).to_have_attribute("data-state", "cleared", timeout=ALARM_MS)
        expect(watcher.locator(".cleared-by .name")).to_have_text(OPERATOR)
    expect(row.locator("button.clear")).to_be_hidden()
    expect(badge).to_be_hidden(timeout=ALARM_MS)
    expect(device_row).to_have_count(0, timeout=ALARM_MS)
    expect(device_page.locator("#alarms-empty")).to_be_visible()

    # A reload reads the same from the store; the state filter narrows to cleared alarms.
    page.goto("/alarms?state=cleared")
    expect(page.locator(f'#alarms tr[data-device="{device}"]')).to_have_attribute(
        "data-state", "cleared"
    )
    page.goto("/alarms?state=open")
    expect(page.locator(f'#alarms tr[data-device="{device}"]')).to_have_count(0)
    expect(page.locator("#alarms-empty")).to_be_visible()
    shoot(page, "alarms-cleared")

    # The fire's MQTT publish is in the notification log, which only an admin may read.
    response = viewer.goto("/notifications")
    assert response is not None
    assert response.status == 403
    admin = admin_context.new_page()
    admin_password = live_fieldhub.admin_password
    assert admin_password is not None
    log_in(admin, "/notifications", ADMIN_USERNAME, admin_password, live=False)
    logged = admin.locator(f'#notifications tr[data-rule="{RULE}"][data-kind="mqtt"]')
    expect(logged).to_have_count(1)
    expect(logged.locator("td.target")).to_have_text(f"e2e/alarms/{device}")
    shoot(admin, "notifications")


WARM_RULE = "e2e-warm-store"


@pytest.fixture(scope="module")
def previewed_device(live_fieldhub: FieldhubProcess, admin_api: httpx.Client) -> str:
    """A device with two stored readings (4 °C, then 12 °C) and a disabled rule on it (so it
    raises nothing live): its preview fires once, at the second reading."""
    device_id = f"e2e-store-{uuid.uuid4().hex[:6]}"
    rule = {
        "id": WARM_RULE,
        "name": "Store room above 10 °C",
        "enabled": False,
        "scope": {"device": device_id},
        "condition": {"threshold": {"metric": "temperature", "above": 10.0, "clear_below": 7.0}},
        "severity": "minor",
        "actions": [{"alarm": {}}],
    }
    answer = admin_api.put(
        f"/api/v1/rules/{WARM_RULE}",
        content=orjson.dumps(rule),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 201, answer.text
    mqtt_url = live_fieldhub.mqtt_url
    assert mqtt_url is not None
    publish_temperature(mqtt_url, device_id, 4.0)
    time.sleep(0.01)  # the second reading a few milliseconds later (ts is in ms)
    publish_temperature(mqtt_url, device_id, 12.0)

    def stored() -> int:
        answer = admin_api.get(f"/api/v1/devices/{device_id}/readings")
        return len(answer.json()["data"]) if answer.status_code == 200 else 0

    wait_until(lambda: stored() >= 2, what=f"{device_id}'s readings to be stored")
    return device_id


def test_rule_page_draws_the_preview(
    page: Page,
    viewer_context: BrowserContext,
    admin_context: BrowserContext,
    live_fieldhub: FieldhubProcess,
    passwords: dict[str, str],
    previewed_device: str,
    admin_api: httpx.Client,
    shoot: Shoot,
) -> None:
    log_in(page, "/rules", OPERATOR, passwords[OPERATOR], live=False)
    listed = page.locator(f'#rules tr[data-rule="{WARM_RULE}"]')
    expect(listed).to_have_attribute("data-enabled", "0")
    listed.locator("td.rule a").click()
    expect(page).to_have_url(re.compile(f"/rules/{WARM_RULE}$"))
    expect(page.locator('#preview-form input[name="device"]')).to_have_value(previewed_device)
    rule_page_ready(page)

    page.locator('#preview-form button[data-range="1h"]').click()
    page.wait_for_function("() => window.fieldhub && window.fieldhub.ready", timeout=PAGE_MS)
    drawn = page.evaluate("() => window.fieldhub")
    assert drawn["levels"] == {"metric": "temperature", "trigger": 10.0, "clear": 7.0}, drawn
    spans = drawn["preview"]["spans"]
    assert len(spans) == 1, spans
    assert spans[0]["cleared"] is None, spans
    expect(page.locator("#preview-spans tbody tr")).to_have_count(1)
    expect(page.locator("#preview-chart canvas")).to_have_count(1)
    expect(page.locator("#preview-note")).to_contain_text("1 alarm span")
    shoot(page, "rule-preview")

    # A viewer reads the document and gets no preview controls.
    viewer = viewer_context.new_page()
    log_in(viewer, f"/rules/{WARM_RULE}", VIEWER, passwords[VIEWER], live=False)
    expect(viewer.locator("#preview-not-allowed")).to_be_visible()
    expect(viewer.locator("#preview-form")).to_have_count(0)
    expect(viewer.locator("#rule-document-view")).to_contain_text(previewed_device)
    expect(viewer.locator("#rule-save")).to_have_count(0)
    expect(viewer.locator("#rule-toggle")).to_have_count(0)

    # An operator may try edits in the preview but not save them; an admin saves a new version.
    expect(page.locator("#rule-save")).to_have_count(0)
    expect(page.locator("#rule-toggle")).to_have_count(0)
    admin = admin_context.new_page()
    admin_password = live_fieldhub.admin_password
    assert admin_password is not None
    log_in(admin, f"/rules/{WARM_RULE}", ADMIN_USERNAME, admin_password, live=False)
    rule_page_ready(admin)
    text = admin.locator("#rule-document")
    text.fill(text.input_value().replace('"above": 10.0', '"above": 13.0'))
    admin.locator("#rule-save").click()
    expect(admin.locator("#rule-version")).to_contain_text("version 2", timeout=PAGE_MS)
    rule_page_ready(admin)  # the reloaded page's module
    admin.locator('#preview-form button[data-range="1h"]').click()
    admin.wait_for_function("() => window.fieldhub && window.fieldhub.ready", timeout=PAGE_MS)
    # 12 °C is not above 13 °C: no alarm now.
    assert admin.evaluate("() => window.fieldhub.preview.spans.length") == 0

    # The admin enables the rule from the page: a new version, enabled, and the engine runs it.
    toggle = admin.locator("#rule-toggle")
    expect(toggle).to_have_text("Enable")
    toggle.click()
    expect(admin.locator("#rule-enabled")).to_have_text("enabled", timeout=PAGE_MS)
    expect(admin.locator("#rule-version")).to_contain_text("version 3")
    expect(admin.locator("#rule-toggle")).to_have_text("Disable")
    current = admin_api.get(f"/api/v1/rules/{WARM_RULE}").json()
    assert current["enabled"] is True, current
    assert current["version"] == 3, current
