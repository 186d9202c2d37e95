"""The fleet page with 1,000 devices: paginated, searchable, no layout break at any width.

A module of its own: its thousand devices would crowd the first page the other scenarios read.
"""

from __future__ import annotations

import json

from playwright.sync_api import Page, expect

from support.browser import PHONE, Shoot
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all

DEVICES = 1_000
PAGE_ROWS = 50
PAGE_MS = 15_000

# True when nothing sticks out sideways: a table wider than the screen would need a horizontal
# scrollbar on a phone and push columns off a wall screen.
FITS_WIDTH = "() => document.documentElement.scrollWidth <= window.innerWidth"


def test_a_thousand_devices_are_paged_and_fit_the_screen(
    page: Page, live_fieldhub: FieldhubProcess, mqtt_url: str, shoot: Shoot
) -> None:
    publisher = connected_publisher(mqtt_url)
    try:
        publish_all(
            publisher,
            [
                (
                    f"devices/scale-{i:04d}/telemetry",
                    json.dumps({"temperature": 20 + i / 100, "humidity": 40.5}).encode(),
                )
                for i in range(DEVICES)
            ],
        )
    finally:
        publisher.stop()
    wait_until(
        lambda: live_fieldhub.get("/api/v1/devices", limit=1).json()["count"] >= DEVICES,
        timeout_s=60,
        what=f"{DEVICES} devices registered",
    )

    page.goto("/")
    rows = page.locator("table#fleet tbody tr[data-device]")
    expect(rows).to_have_count(PAGE_ROWS, timeout=PAGE_MS)
    expect(page.locator("#count-devices")).to_have_text(str(DEVICES))
    expect(rows.first).to_have_attribute("data-device", "scale-0000")
    expect(rows.first.locator('[data-metric="temperature"]')).to_have_text("20")
    assert page.evaluate(FITS_WIDTH), "the fleet page is wider than a desktop screen"
    shoot(page, "f1-fleet-1000-devices")

    page.locator("a[rel=next]").click()
    expect(rows.first).to_have_attribute("data-device", "scale-0050", timeout=PAGE_MS)
    expect(rows).to_have_count(PAGE_ROWS)

    page.locator("input[name=search]").fill("scale-0999")
    page.locator("form.filters button[type=submit]").click()
    expect(rows).to_have_count(1, timeout=PAGE_MS)
    expect(rows.first.locator('[data-metric="temperature"]')).to_have_text("29.99")

    page.set_viewport_size(PHONE)
    page.goto("/")
    expect(rows).to_have_count(PAGE_ROWS, timeout=PAGE_MS)
    assert page.evaluate(FITS_WIDTH), "the fleet page is wider than a phone screen"
