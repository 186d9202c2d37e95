"""The live dashboard in a real browser, fed by simulated devices through real MQTT.

Each test is a scenario an operator lives through: a device turns up, reports, loses power, sends
garbage. Devices publish through the simulator's NativeDevice (status with a last will, QoS 1
telemetry) to fieldhub's embedded Mosquitto; the pages are read only through their DOM contract
(docs/live.md and the templates). Every test leaves screenshots in artifacts/screenshots/.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Locator, Page, expect

from support.browser import Shoot
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all
from support.sim_devices import Sent, SimDevice

SimDeviceFactory = Callable[[str], SimDevice]

# A page loads and its WebSocket subscribes within this (the server is local; chromium is slow
# to start its first renderer on a loaded 2-core box).
PAGE_MS = 15_000
# A committed reading reaches an open page within this: ingest linger (5 ms at low rates, 100 ms
# above 5,000 msg/s) + at most the live coalescing window (250 ms) + a WebSocket frame; the rest
# is headroom for a busy CI machine.
LIVE_MS = 5_000
# The product promise for presence: an unclean drop shows offline within 2 s of the will.
WILL_MS = 2_000

NATIVE_METRICS = {"temperature", "humidity", "rssi", "seq"}
MALFORMED = b'{"temperature": 21.5,'
# The reason cell starts with the reason code; a human-readable detail may follow it on its own
# line (so the assertions read innerText: textContent would run the two together).
REASON_MALFORMED = re.compile(r"^\s*malformed_json(\s|$)")

# A JavaScript marker survives only as long as the document: if it is still there, the page was
# never reloaded or navigated away from, so what changed on it arrived live.
SET_MARKER = "() => { window.__e2eNoReload = true; }"
HAS_MARKER = "() => window.__e2eNoReload === true"

READ_CHARTS = """() => Object.fromEntries(
    Object.entries((window.fieldhub && window.fieldhub.charts) || {}).map(
        ([metric, c]) => [metric, {x: Array.from(c.x), y: Array.from(c.y)}]))"""
CHART_HAS_TS = """([metrics, ts]) => metrics.every(m => {
    const c = window.fieldhub && window.fieldhub.charts && window.fieldhub.charts[m];
    return c !== undefined && Array.from(c.x).includes(ts);
})"""
CHART_LONGER = """([metric, n]) => {
    const c = window.fieldhub && window.fieldhub.charts && window.fieldhub.charts[metric];
    return c !== undefined && c.x.length > n;
}"""

Points = dict[int, float | None]


def open_live(page: Page, path: str) -> None:
    """Go to `path` and wait until its WebSocket subscription is confirmed."""
    response = page.goto(path)
    assert response is not None, f"no response for {path}"
    assert response.ok, f"GET {path} -> {response.status}"
    expect(page.locator("body")).to_have_attribute("data-live", "connected", timeout=PAGE_MS)


def fleet_row(page: Page, device_id: str) -> Locator:
    return page.locator(f'table#fleet tbody tr[data-device="{device_id}"]')


def expect_value(row: Locator, sent: Sent, metric: str) -> None:
    """The row's cell for `metric` shows this message's reading: its time exactly, its value as
    formatted for display."""
    # One locator for "the cell carrying this time", so the text read below comes from the same
    # element whose data-ts matched, even if the page re-renders its rows in between.
    cell = row.locator(f'td [data-metric="{metric}"][data-ts="{sent.ts_us}"]')
    expect(cell).to_have_count(1, timeout=LIVE_MS)
    text = cell.inner_text(timeout=LIVE_MS)
    match = re.search(r"-?\d+(?:\.(\d+))?", text.replace("\u2212", "-"))
    assert match, f"{metric} cell shows no number: {text!r}"
    decimals = len(match.group(1) or "")
    # The page may round for display; it must not show a different number.
    assert abs(float(match.group(0)) - sent.values[metric]) <= 0.5 * 10**-decimals + 1e-9, (
        f"{metric} cell shows {text!r}, published {sent.values[metric]}"
    )


def read_charts(page: Page) -> dict[str, Points]:
    """`window.fieldhub.charts` as metric -> {ts_us: value}: what each chart draws."""
    raw: dict[str, dict[str, list[Any]]] = page.evaluate(READ_CHARTS)
    charts: dict[str, Points] = {}
    for metric, series in raw.items():
        xs, ys = series["x"], series["y"]
        assert len(xs) == len(ys), f"chart {metric}: {len(xs)} times but {len(ys)} values"
        charts[metric] = {
            int(x): (None if y is None else float(y)) for x, y in zip(xs, ys, strict=True)
        }
    return charts


def wait_until_charted(page: Page, sent: Sent, timeout_ms: float = LIVE_MS) -> None:
    """Wait until every chart of the message's metrics has a point at its time."""
    page.wait_for_function(CHART_HAS_TS, arg=[sorted(sent.values), sent.ts_us], timeout=timeout_ms)


def wait_until_registered(fh: FieldhubProcess, device: SimDevice) -> None:
    """The device and its metrics are stored, so its page exists and has every chart."""

    def metrics() -> set[str]:
        response = fh.get(f"/api/v1/devices/{device.id}")
        if response.status_code != 200:
            return set()
        return {m["name"] for m in response.json()["metrics"]}

    wait_until(lambda: metrics() >= NATIVE_METRICS, what=f"{device.id} to register with metrics")


def test_new_device_appears_and_updates_live(
    page: Page, sim_device: SimDeviceFactory, shoot: Shoot
) -> None:
    """A device nobody has seen: its row appears on the open fleet page, its values follow each
    message, and its device page's charts grow, all without a reload."""
    open_live(page, "/")
    page.evaluate(SET_MARKER)
    devices_before = int(page.locator("#count-devices").inner_text())
    online_before = int(page.locator("#count-online").inner_text())
    shoot(page, "a1-fleet-before-device")

    device = sim_device("new")
    first = device.publish()
    row = fleet_row(page, device.id)
    expect(row).to_have_count(1, timeout=LIVE_MS)
    expect(row.locator(".badge[data-state]")).to_have_attribute(
        "data-state", "online", timeout=LIVE_MS
    )
    expect(page.locator("#count-devices")).to_have_text(str(devices_before + 1), timeout=LIVE_MS)
    expect(page.locator("#count-online")).to_have_text(str(online_before + 1), timeout=LIVE_MS)
    expect_value(row, first, "temperature")

    # docs/live.md: what the page shows live comes through its WebSocket. Following a known
    # device's readings needs no HTTP request (a re-read is for reconnects and `lagged` only).
    requests: list[str] = []
    page.on(
        "request",
        lambda r: requests.append(r.url) if r.resource_type in ("fetch", "xhr") else None,
    )
    second = device.publish()
    expect_value(row, second, "temperature")
    assert page.evaluate(HAS_MARKER), "the fleet page reloaded; the row must arrive live"
    assert not requests, (
        f"the fleet page made {len(requests)} HTTP requests while one reading arrived live, "
        f"e.g. {requests[:3]}"
    )
    shoot(page, "a2-fleet-device-live")

    open_live(page, f"/devices/{device.id}")
    page.evaluate(SET_MARKER)
    expect(page.locator("#presence")).to_have_attribute("data-state", "online", timeout=PAGE_MS)
    expect(page.locator("table#attributes")).to_be_visible(timeout=PAGE_MS)
    for metric in NATIVE_METRICS:
        expect(page.locator(f'[data-chart="{metric}"]')).to_have_count(1, timeout=PAGE_MS)
    # The page draws its history after load, from the API; it holds both stored messages.
    wait_until_charted(page, second, PAGE_MS)
    history = read_charts(page)["temperature"]
    assert history.get(first.ts_us) == first.values["temperature"]
    assert history.get(second.ts_us) == second.values["temperature"]

    third = device.publish()
    page.wait_for_function(CHART_LONGER, arg=["temperature", len(history)], timeout=LIVE_MS)
    wait_until_charted(page, third)
    grown = read_charts(page)["temperature"]
    assert grown[third.ts_us] == third.values["temperature"]
    assert len(grown) == len(history) + 1, "one message adds one point, keeping the history"
    assert page.evaluate(HAS_MARKER), "the device page reloaded; the point must arrive live"
    shoot(page, "a3-device-chart-live")


def test_unclean_disconnect_shows_offline_within_two_seconds(
    page: Page, sim_device: SimDeviceFactory, live_fieldhub: FieldhubProcess, shoot: Shoot
) -> None:
    """Power loss: the device's TCP connection drops without DISCONNECT, the broker publishes its
    last will, and the open fleet page shows it offline within 2 s."""
    device = sim_device("will")
    device.publish()
    wait_until_registered(live_fieldhub, device)
    open_live(page, "/")
    page.evaluate(SET_MARKER)
    badge = fleet_row(page, device.id).locator(".badge[data-state]")
    expect(badge).to_have_attribute("data-state", "online", timeout=PAGE_MS)
    shoot(page, "b1-fleet-device-online")

    # crash() returns once it has closed the socket (it first waits up to ~1 s for the client's
    # network thread to stop, with the connection still up): the clock starts at the close,
    # when Mosquitto sees the connection end and publishes the will.
    device.crash()
    dropped = time.monotonic()
    expect(badge).to_have_attribute("data-state", "offline", timeout=WILL_MS)
    elapsed = time.monotonic() - dropped
    assert elapsed <= WILL_MS / 1000, f"offline shown {elapsed:.2f} s after the drop"
    assert page.evaluate(HAS_MARKER), "the fleet page reloaded; presence must arrive live"
    shoot(page, "b2-fleet-device-offline")

    # What the page shows live is what the store holds.
    presence = live_fieldhub.get(f"/api/v1/devices/{device.id}").json()["presence"]
    assert presence == "offline"


def test_malformed_message_is_listed_with_its_reason(
    page: Page, mqtt_url: str, shoot: Shoot
) -> None:
    """Invalid JSON on a native telemetry topic turns up on the open dead-letters page with its
    reason, and the page's filters find it."""
    suffix = uuid.uuid4().hex[:6]
    broken, other = f"e2e-broken-{suffix}", f"e2e-other-{suffix}"
    topic = f"devices/{broken}/telemetry"
    open_live(page, "/dead-letters")
    page.evaluate(SET_MARKER)

    publisher = connected_publisher(mqtt_url)
    try:
        publish_all(publisher, [(topic, MALFORMED), (f"devices/{other}/telemetry", MALFORMED)])
    finally:
        publisher.stop()

    rows = page.locator("table#dead-letters tbody tr")
    ours = rows.filter(has=page.locator("td.topic", has_text=topic))
    expect(ours).to_have_count(1, timeout=LIVE_MS)
    expect(ours.locator("td.topic")).to_have_text(topic)
    expect(ours.locator("td.reason")).to_have_text(REASON_MALFORMED, use_inner_text=True)
    assert page.evaluate(HAS_MARKER), "the page reloaded; the dead letter must arrive live"
    shoot(page, "c1-dead-letters-live")

    # Filtering is a plain GET form: the reloaded page reads the store, which already holds both
    # messages (live events are sent only after the commit).
    page.locator("select[name=reason]").select_option("malformed_json")
    page.locator("input[name=device]").fill(broken)
    page.locator("input[name=device]").press("Enter")
    expect(page).to_have_url(re.compile(r"[?&]reason=malformed_json(&|$)"), timeout=PAGE_MS)
    expect(page).to_have_url(re.compile(rf"[?&]device={re.escape(broken)}(&|$)"))
    expect(rows).to_have_count(1, timeout=PAGE_MS)
    expect(rows.locator("td.topic")).to_have_text(topic)
    expect(rows.locator("td.reason")).to_have_text(REASON_MALFORMED, use_inner_text=True)
    expect(page.locator("select[name=reason]")).to_have_value("malformed_json")
    expect(page.locator("input[name=device]")).to_have_value(broken)
    shoot(page, "c2-dead-letters-filtered")


def test_streamed_points_are_the_stored_history(
    page: Page, sim_device: SimDeviceFactory, live_fieldhub: FieldhubProcess, shoot: Shoot
) -> None:
    """What the device page drew live is what a reload reads back: same times, same values."""
    device = sim_device("replay")
    registered = device.publish()
    wait_until_registered(live_fieldhub, device)
    open_live(page, f"/devices/{device.id}")
    page.evaluate(SET_MARKER)
    for metric in NATIVE_METRICS:
        expect(page.locator(f'[data-chart="{metric}"]')).to_have_count(1, timeout=PAGE_MS)
    # The history is drawn after load, from the API: wait for it before telling streamed
    # points from loaded ones.
    wait_until_charted(page, registered, PAGE_MS)
    on_load = read_charts(page)

    sent: list[Sent] = []
    for _ in range(5):
        message = device.publish()
        # One message at a time: the point of this test is the replay, not coalescing.
        wait_until_charted(page, message)
        sent.append(message)
    live = read_charts(page)
    assert page.evaluate(HAS_MARKER), "the device page reloaded while streaming"
    streamed = {
        metric: {ts: y for ts, y in points.items() if ts not in on_load.get(metric, {})}
        for metric, points in live.items()
    }
    for message in sent:
        for metric, value in message.values.items():
            assert streamed[metric].get(message.ts_us) == value, (
                f"{metric} at {message.ts_us}: published {value}, "
                f"streamed {streamed[metric].get(message.ts_us)}"
            )
    shoot(page, "d1-device-streamed")

    page.reload()
    expect(page.locator("body")).to_have_attribute("data-live", "connected", timeout=PAGE_MS)
    wait_until_charted(page, sent[-1], PAGE_MS)  # the reloaded history has been drawn
    reloaded = read_charts(page)
    for metric, points in streamed.items():
        history = reloaded.get(metric, {})
        missing = {ts: y for ts, y in points.items() if history.get(ts, "absent") != y}
        assert not missing, (
            f"{metric}: streamed points not in the reloaded history with the same value: "
            f"{ {ts: (y, history.get(ts, 'absent')) for ts, y in missing.items()} }"
        )
    shoot(page, "d2-device-reloaded")


def test_system_page_shows_live_stats(
    page: Page, sim_device: SimDeviceFactory, shoot: Shoot
) -> None:
    """The system page shows ingest, queue and broker state and keeps the figures current."""
    open_live(page, "/system")
    page.evaluate(SET_MARKER)

    def stat(name: str) -> Locator:
        return page.locator(f'[data-stat="{name}"]')

    expect(stat("broker.connected")).to_have_text("up")
    expect(stat("ingest.messages_per_s")).to_have_text(re.compile(r"^\d+(\.\d+)?$"))
    expect(stat("ingest.queue_depth")).to_have_text(re.compile(r"^\d+$"))
    # This page's own WebSocket is a viewer; the figure rendered before it connected was not.
    expect(stat("live.viewers")).to_have_text(re.compile(r"^[1-9]\d*$"), timeout=LIVE_MS)
    devices_before = int(stat("fleet.devices").inner_text())

    sim_device("system").publish()
    expect(stat("fleet.devices")).to_have_text(str(devices_before + 1), timeout=LIVE_MS)
    assert page.evaluate(HAS_MARKER), "the system page reloaded; its figures must update live"
    shoot(page, "e1-system")
