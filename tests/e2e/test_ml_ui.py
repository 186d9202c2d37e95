"""The ML page and the device page's window decisions in a real browser, against `fieldhub up`
with authentication on.

A native device reports a room (temperature, humidity, sound, window position) over ten minutes;
the admin gives it its own guards (shadow: decide, never move) through the API, asks for a
decision (`POST .../decide`) and a backbone asks on `ml/inference/request/{id}`. A viewer sees
those decisions on /ml with the histogram and latency panels saying what /api/v1/ml/stats says,
and no buttons; the admin activates version 1 from the page (and sees a refused roll back's
error); an operator on the device page sees its decisions and adds one with "Decide now", and an
admin changes a guard there. A second device configured to act gets a decision that moves its
window, then a manual set_window 20 points away: the accuracy panel says 20 points.

The pages are read through their DOM contract: `#decisions tr[data-decision]` with
`data-device`; `#histogram [data-bucket] .count`; `#ml-total`, `#latency-p50`, `#latency-p99`;
`#per-device tr[data-device] .count`; `#models tr[data-version]` with `data-active` and
`button.activate`; `#rollback`, `#models-error`, `#models-history`; on the device page
`#window-decisions`, `#window-decisions-table tr[data-decision]`, `#decide-now`,
`#window-guards`; `#accuracy-summary`, `#accuracy`; `window.fieldhub` (stats, decisions,
models, correlation, ready).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

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

# A page loads and runs its module within this (see test_dashboard.py).
PAGE_MS = 15_000
# The ML page refreshes every 5 s and the device page's decisions every 10 s: two rounds.
REFRESH_MS = 25_000

OPERATOR = "omar"
VIEWER = "vera"
# Shadow with the other guards open: every decision goes through the model and is recorded,
# nothing is sent to a device that has no window.
GUARDS = {"shadow": True, "min_confidence": 0.0, "deadband": 0, "min_interval_s": 0}
MINUTES = 10
# What a panel shows for a number there is none of (an en dash).
NO_VALUE = "\u2013"


@pytest.fixture(scope="module")
def live_fieldhub(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoProcess
) -> Iterator[FieldhubProcess]:
    with authed_fieldhub(tmp_path_factory.mktemp("e2e-ml"), mosquitto.url) as fh:
        yield fh


@pytest.fixture(scope="module")
def admin_api(live_fieldhub: FieldhubProcess) -> Iterator[httpx.Client]:
    with admin_client(live_fieldhub) as client:
        yield client


@pytest.fixture(scope="module")
def passwords(admin_api: httpx.Client) -> dict[str, str]:
    """An operator and a viewer, added by the admin through the API."""
    return add_users(admin_api, {OPERATOR: "operator", VIEWER: "viewer"})


def publish(mqtt_url: str, messages: list[tuple[str, bytes]]) -> None:
    publisher = connected_publisher(mqtt_url)
    try:
        publish_all(publisher, messages)
    finally:
        publisher.stop()


def room_readings(device_id: str) -> list[tuple[str, bytes]]:
    """A minute apart over the last MINUTES minutes: warming up, the window opening with it."""
    now_ms = round(time.time() * 1000)
    messages = []
    for k in range(MINUTES):
        ago = MINUTES - 1 - k
        body = {
            "v": 1,
            "ts": now_ms - ago * 60_000,
            "temperature": 22.0 + 0.5 * k,
            "humidity": 50.0 + (k % 3),
            "sound_volume": -45.0 + (k % 4),
            "window_position": 5.0 * k,
        }
        messages.append((f"devices/{device_id}/telemetry", orjson.dumps(body)))
    return messages


def backbone_request(device_id: str) -> bytes:
    """The backbone's models.InferenceRequest (tests/integration/test_ml_backbone.py)."""
    body = {
        "device_id": device_id,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "temperature": 27.5,
        "humidity": 61.0,
        "sound_volume": -38.7,
    }
    return json.dumps(body).encode()


def decisions_of(api: httpx.Client, device_id: str) -> list[dict[str, Any]]:
    answer = api.get("/api/v1/ml/decisions", params={"device": device_id, "limit": 100})
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


@pytest.fixture(scope="module")
def room(live_fieldhub: FieldhubProcess, admin_api: httpx.Client) -> str:
    """A room device with its own guards and at least two decisions: one asked for through the
    API, one by a backbone's request over MQTT."""
    mqtt_url = live_fieldhub.mqtt_url
    assert mqtt_url is not None
    device_id = f"e2e-room-{uuid.uuid4().hex[:6]}"
    publish(mqtt_url, room_readings(device_id))
    wait_until(
        lambda: admin_api.get(f"/api/v1/devices/{device_id}").status_code == 200,
        what=f"{device_id} to be known",
    )
    answer = admin_api.put(f"/api/v1/ml/devices/{device_id}", json={"guards": GUARDS})
    assert answer.status_code == 200, answer.text
    assert answer.json()["configured"] is True
    decided = admin_api.post(f"/api/v1/ml/devices/{device_id}/decide")
    assert decided.status_code == 200, decided.text
    assert decided.json()["device_id"] == device_id
    publish(mqtt_url, [(f"ml/inference/request/{device_id}", backbone_request(device_id))])
    wait_until(
        lambda: any(d["trigger"] == "request" for d in decisions_of(admin_api, device_id)),
        what="the backbone's request to be decided",
    )
    return device_id


def log_in(page: Page, path: str, username: str, password: str) -> None:
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.locator('#login-form input[name="username"]').fill(username)
    page.locator('#login-form input[name="password"]').fill(password)
    page.locator('#login-form button[type="submit"]').click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"), timeout=PAGE_MS)


def ml_page_ready(page: Page) -> None:
    page.wait_for_function("() => window.fieldhub && window.fieldhub.ready", timeout=PAGE_MS)


def shown_stats(page: Page) -> dict[str, Any]:
    """What the page's panels show, as numbers."""
    counts = page.locator("#histogram [data-bucket] .count").all_inner_texts()

    def number(selector: str) -> float | None:
        text = page.locator(selector).inner_text()
        return None if text == NO_VALUE else float(text)

    return {
        "total": int(page.locator("#ml-total").inner_text()),
        "histogram": [int(c) for c in counts],
        "p50": number("#latency-p50"),
        "p99": number("#latency-p99"),
    }


def api_stats(api: httpx.Client) -> dict[str, Any]:
    stats = api.get("/api/v1/ml/stats").json()

    def rounded(value: float | None) -> float | None:
        # The page shows at most two decimals (format.js formatValue).
        return None if value is None else round(value, 2)

    return {
        "total": stats["total"],
        "histogram": stats["confidence_histogram"],
        "p50": rounded(stats["latency_p50_ms"]),
        "p99": rounded(stats["latency_p99_ms"]),
    }


@pytest.fixture
def admin_context(browser: Browser, live_fieldhub: FieldhubProcess) -> Iterator[BrowserContext]:
    context = browser.new_context(base_url=live_fieldhub.base_url, viewport=DESKTOP)
    yield context
    context.close()


@pytest.fixture
def viewer_context(browser: Browser, live_fieldhub: FieldhubProcess) -> Iterator[BrowserContext]:
    context = browser.new_context(base_url=live_fieldhub.base_url, viewport=DESKTOP)
    yield context
    context.close()


def test_ml_page_shows_decisions_stats_and_models(
    page: Page,
    admin_context: BrowserContext,
    live_fieldhub: FieldhubProcess,
    admin_api: httpx.Client,
    passwords: dict[str, str],
    room: str,
    shoot: Shoot,
) -> None:
    """A viewer sees the decisions, the panels agree with the API, and there are no buttons;
    the admin activates version 1 from the page."""
    log_in(page, "/ml", VIEWER, passwords[VIEWER])
    ml_page_ready(page)
    expect(page.locator("#nav-ml")).to_have_attribute("aria-current", "page")

    # Every decision of the room (newest 50 of all) is in the recent decisions table.
    for decision in decisions_of(admin_api, room):
        row = page.locator(f'#decisions tr[data-decision="{decision["id"]}"]')
        expect(row).to_have_attribute("data-device", room, timeout=REFRESH_MS)
        expect(row.locator("td.trigger")).to_have_text(decision["trigger"])
        expect(row.locator("td.outcome")).to_have_text(decision["outcome"])
    request_row = page.locator(f'#decisions tr[data-device="{room}"]', has_text="request")
    expect(request_row.first).to_be_visible()
    per_device = page.locator(f'#per-device tr[data-device="{room}"] .count')
    expect(per_device).to_have_text(str(len(decisions_of(admin_api, room))), timeout=REFRESH_MS)

    # The histogram and latency panels say what /api/v1/ml/stats says (the loop's own trigger
    # may add a decision between two reads: compare until both are the same moment).
    def panels_agree() -> bool:
        return shown_stats(page) == api_stats(admin_api)

    wait_until(
        panels_agree, timeout_s=REFRESH_MS / 1000, interval_s=0.5, what="the panels to match /stats"
    )
    shown = shown_stats(page)
    assert shown["total"] >= 2
    # Only the room has decisions; a refused one (inputs, one at a time) has no confidence.
    confident = [d for d in decisions_of(admin_api, room) if d["confidence"] is not None]
    assert confident
    assert sum(shown["histogram"]) == len(confident)
    assert shown["p50"] is not None
    assert shown["p99"] is not None
    assert shown["p50"] <= shown["p99"]

    # The chosen device's panels: the room is the only device with decisions.
    expect(page.locator("#ml-device")).to_have_value(room)
    page.wait_for_function("d => window.fieldhub.device === d", arg=room, timeout=PAGE_MS)
    correlation = page.evaluate("() => window.fieldhub.correlation")
    # Temperature and the window rise together minute by minute in room_readings.
    pair = correlation["temperature~window_position"]
    assert pair["n"] >= 3, pair
    assert pair["r"] is not None, pair
    assert pair["r"] > 0.99, pair

    # Models: version 1 active and serving; a viewer has no buttons.
    version1 = page.locator('#models tr[data-version="1"]')
    expect(version1).to_have_attribute("data-active", "1", timeout=PAGE_MS)
    expect(version1.locator("td.state")).to_have_text("active, serving")
    expect(version1.locator("td.mae")).to_have_text(re.compile(r"^\d+\.\d\d$"))
    expect(version1.locator("td.calibration")).to_contain_text("≥0.5")
    expect(page.locator("#models button")).to_have_count(0)
    expect(page.locator("#rollback")).to_have_count(0)
    expect(page.locator("button")).to_have_count(1)  # only Log out
    shoot(page, "ml-viewer")

    # The admin activates version 1 again (validated, recorded in the history).
    admin_password = live_fieldhub.admin_password
    assert admin_password is not None
    admin = admin_context.new_page()
    log_in(admin, "/ml", ADMIN_USERNAME, admin_password)
    ml_page_ready(admin)
    history_before = len(admin_api.get("/api/v1/ml/models").json()["history"])
    admin.locator('#models tr[data-version="1"] button.activate').click()
    expect(admin.locator("#models-history")).to_contain_text(
        f"activate v1 by {ADMIN_USERNAME}", timeout=PAGE_MS
    )
    expect(admin.locator("#models-error")).to_be_hidden()
    models = admin_api.get("/api/v1/ml/models").json()
    assert models["active"] == 1
    assert models["serving"] == 1
    assert len(models["history"]) == history_before + 1
    assert models["history"][-1]["by"] == ADMIN_USERNAME
    # Roll back with one version only: refused, and the page says why.
    admin.locator("#rollback").click()
    expect(admin.locator("#models-error")).to_contain_text("roll back", timeout=PAGE_MS)
    shoot(admin, "ml-admin")


def test_device_page_lists_decisions_and_decides_now(
    page: Page,
    admin_context: BrowserContext,
    viewer_context: BrowserContext,
    live_fieldhub: FieldhubProcess,
    admin_api: httpx.Client,
    passwords: dict[str, str],
    room: str,
    shoot: Shoot,
) -> None:
    """An operator sees the room's decisions and adds one; no guards form below admin; a
    device the loop never decided for has no such section."""
    log_in(page, f"/devices/{room}", OPERATOR, passwords[OPERATOR])
    section = page.locator("#window-decisions")
    expect(section).to_be_visible()
    rows = page.locator("#window-decisions-table tr[data-decision]")
    before = decisions_of(admin_api, room)
    for decision in before:
        expect(
            page.locator(f'#window-decisions-table tr[data-decision="{decision["id"]}"]')
        ).to_be_visible(timeout=PAGE_MS)
    expect(page.locator("#window-guards")).to_have_count(0)

    page.locator("#decide-now").click()
    wait_until(lambda: len(decisions_of(admin_api, room)) > len(before), what="a new decision")
    newest = decisions_of(admin_api, room)[0]
    assert newest["reason"] == "on_demand"
    expect(
        page.locator(f'#window-decisions-table tr[data-decision="{newest["id"]}"]')
    ).to_be_visible(timeout=PAGE_MS)
    expect(rows.first).to_have_attribute("data-decision", newest["id"])
    # Each cell under its heading.
    headings = page.locator("#window-decisions-table thead th").all_inner_texts()
    cells = rows.first.locator("td").all_inner_texts()
    shown = dict(zip([h.strip().lower() for h in headings], cells, strict=True))
    assert shown["outcome"] == newest["outcome"]
    assert shown["reason"] == "on_demand"
    expect(page.locator("#window-error")).to_be_hidden()
    shoot(page, "device-window-decisions")

    # A device the loop never decided for and nobody configured: no section.
    mqtt_url = live_fieldhub.mqtt_url
    assert mqtt_url is not None
    other = f"e2e-plain-{uuid.uuid4().hex[:6]}"
    body = orjson.dumps({"v": 1, "ts": round(time.time() * 1000), "pressure": 1013.0})
    publish(mqtt_url, [(f"devices/{other}/telemetry", body)])
    wait_until(
        lambda: admin_api.get(f"/api/v1/devices/{other}").status_code == 200,
        what=f"{other} to be known",
    )
    page.goto(f"/devices/{other}")
    expect(page.locator("#device")).to_be_visible()
    expect(page.locator("#window-decisions")).to_have_count(0)

    # A viewer sees the decisions, without the button or the form.
    viewer = viewer_context.new_page()
    log_in(viewer, f"/devices/{room}", VIEWER, passwords[VIEWER])
    expect(
        viewer.locator(f'#window-decisions-table tr[data-decision="{newest["id"]}"]')
    ).to_be_visible(timeout=PAGE_MS)
    expect(viewer.locator("#window-decisions button")).to_have_count(0)
    expect(viewer.locator("#window-guards")).to_have_count(0)

    # The admin sets a guard from the form; the API has it.
    admin_password = live_fieldhub.admin_password
    assert admin_password is not None
    admin = admin_context.new_page()
    log_in(admin, f"/devices/{room}", ADMIN_USERNAME, admin_password)
    form = admin.locator("#window-guards")
    expect(form.locator('input[name="shadow"]')).to_be_checked(timeout=PAGE_MS)
    expect(form.locator('input[name="min_interval_s"]')).to_have_value("0")
    form.locator('input[name="deadband"]').fill("7")
    form.locator('button[type="submit"]').click()
    expect(form.locator(".saved")).to_be_visible(timeout=PAGE_MS)
    guards = admin_api.get(f"/api/v1/ml/devices/{room}").json()["config"]["guards"]
    assert guards["deadband"] == 7
    assert guards["shadow"] is True
    assert guards["min_confidence"] == 0.0


def test_accuracy_against_a_manual_correction(
    page: Page,
    live_fieldhub: FieldhubProcess,
    admin_api: httpx.Client,
    passwords: dict[str, str],
    shoot: Shoot,
) -> None:
    """A decision that moved the window, then a person's set_window 20 points away within the
    override time: the accuracy panel says 20 points."""
    mqtt_url = live_fieldhub.mqtt_url
    assert mqtt_url is not None
    device_id = f"e2e-act-{uuid.uuid4().hex[:6]}"
    # Configured before its first reading, so the loop's first decision acts.
    acting = {**GUARDS, "shadow": False}
    answer = admin_api.put(f"/api/v1/ml/devices/{device_id}", json={"guards": acting})
    assert answer.status_code == 200, answer.text
    publish(mqtt_url, room_readings(device_id))

    def actuated() -> dict[str, Any] | None:
        found = [d for d in decisions_of(admin_api, device_id) if d["outcome"] == "actuated"]
        return found[0] if found else None

    decision = wait_until(actuated, what="a decision that moves the window")
    target = decision["target_position"]
    manual = target + 20 if target <= 80 else target - 20
    sent = admin_api.post(
        f"/api/v1/devices/{device_id}/commands",
        json={"name": "set_window", "params": {"position": manual}},
    )
    assert sent.status_code == 201, sent.text

    log_in(page, f"/ml?device={device_id}", VIEWER, passwords[VIEWER])
    ml_page_ready(page)
    page.wait_for_function("d => window.fieldhub.device === d", arg=device_id, timeout=PAGE_MS)
    expect(page.locator("#accuracy-summary")).to_contain_text(
        "1 corrected decisions: mean error 20.0 points, 0 % within 10"
    )
    row = page.locator("#accuracy tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(1)).to_have_text(str(target))
    expect(row.locator("td").nth(2)).to_have_text(str(manual))
    shoot(page, "ml-accuracy")
