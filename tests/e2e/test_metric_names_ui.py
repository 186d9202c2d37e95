"""A device may name a metric anything (issue 18): the device page charts metrics named like
JavaScript's object machinery (`constructor`, `__proto__`, `toString`) like any other, from the
loaded history and live, without a JavaScript error (the `page` fixture fails on one)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from playwright.sync_api import Page, expect

from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all

PAGE_MS = 15_000
LIVE_MS = 5_000
METRICS = ("constructor", "__proto__", "toString", "hasOwnProperty", "temp")
# What each chart draws, as metric -> [[ts_us, value], ...].
READ_CHARTS = """() => Object.entries((window.fieldhub && window.fieldhub.charts) || {}).map(
    ([metric, c]) => [metric, Array.from(c.x).map((x, i) => [x, c.y[i]])])"""


def publish(mqtt_url: str, device: str, ts_ms: int, offset: float) -> None:
    values = {metric: index + offset for index, metric in enumerate(METRICS)}
    publisher = connected_publisher(mqtt_url)
    publish_all(publisher, [(f"devices/{device}/telemetry", orjson.dumps({"ts": ts_ms, **values}))])
    publisher.stop()


def charts(page: Page) -> dict[str, dict[int, float]]:
    raw: list[list[Any]] = page.evaluate(READ_CHARTS)
    return {metric: {int(x): float(y) for x, y in points} for metric, points in raw}


def test_metrics_named_like_object_properties_are_charted(
    page: Page, live_fieldhub: FieldhubProcess, mqtt_url: str
) -> None:
    device = f"e2e-names-{uuid.uuid4().hex[:6]}"
    first_ms = int(time.time() * 1000) - 10_000
    publish(mqtt_url, device, first_ms, 0.0)
    wait_until(
        lambda: (
            (found := live_fieldhub.get(f"/api/v1/devices/{device}")).status_code == 200
            and {m["name"] for m in found.json()["metrics"]} == set(METRICS)
        ),
        what="the device and its five metrics stored",
    )
    response = page.goto(f"/devices/{device}")
    assert response is not None
    assert response.ok
    expect(page.locator("body")).to_have_attribute("data-live", "connected", timeout=PAGE_MS)
    for metric in METRICS:
        expect(page.locator(f'figure[data-chart="{metric}"]')).to_have_count(1, timeout=PAGE_MS)
    first_us = first_ms * 1000
    page.wait_for_function(
        "([n, ts]) => Object.keys(window.fieldhub.charts || {}).length === n"
        " && Object.values(window.fieldhub.charts).every(c => Array.from(c.x).includes(ts))",
        arg=[len(METRICS), first_us],
        timeout=PAGE_MS,
    )
    second_ms = first_ms + 5_000
    publish(mqtt_url, device, second_ms, 0.5)
    page.wait_for_function(
        "([n, ts]) => Object.keys(window.fieldhub.charts || {}).length === n"
        " && Object.values(window.fieldhub.charts).every(c => Array.from(c.x).includes(ts))",
        arg=[len(METRICS), second_ms * 1000],
        timeout=LIVE_MS,
    )
    assert charts(page) == {
        metric: {first_us: float(index), second_ms * 1000: index + 0.5}
        for index, metric in enumerate(METRICS)
    }
