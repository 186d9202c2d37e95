"""Fixtures for the browser tests: a real fieldhub, simulated devices, Debian's chromium.

Each test module gets its own `fieldhub up` with its own embedded Mosquitto and data directory:
native topics have no per-test prefix (`devices/{id}/...`), so on a shared broker the fleet page
would show every other test's devices, retained status included.

Playwright's sync API is used from plain (non-async) tests. Between two sync calls it leaves its
own event loop marked as running on the main thread, so while it is alive pytest-asyncio cannot
run any async test ("Runner.run() cannot be called from a running event loop"). The browser is
therefore package-scoped, not session-scoped: one browser for all of tests/e2e, closed after the
package's last test and before the async tests elsewhere in the suite run.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Callable, Generator, Iterator

import pytest
from playwright.sync_api import Browser, Error, Page, sync_playwright

from fieldhub.mqtt.endpoint import MqttEndpoint, parse_mqtt_url
from support.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, Shoot, take_screenshots
from support.fieldhub_process import FieldhubProcess
from support.sim_devices import SimDevice

CALL_FAILED = pytest.StashKey[bool]()

SimDeviceFactory = Callable[[str], SimDevice]


def in_ci() -> bool:
    """True under CI (`CI=true`), where a missing browser must fail the run, not skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # The page fixture's teardown reads this to keep a screenshot of the page a test failed on.
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report


# ---------------------------------------------------------------------------
# fieldhub and devices
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_fieldhub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldhubProcess]:
    """`fieldhub up` on free ports with its embedded Mosquitto and a fresh data directory."""
    fh = FieldhubProcess(data_dir=tmp_path_factory.mktemp("e2e-fieldhub")).start()
    yield fh
    fh.stop()


@pytest.fixture(scope="module")
def mqtt_url(live_fieldhub: FieldhubProcess) -> str:
    """The embedded broker of `live_fieldhub`, where simulated devices connect."""
    assert live_fieldhub.mqtt_port is not None, "live_fieldhub runs its embedded broker"
    return f"mqtt://127.0.0.1:{live_fieldhub.mqtt_port}"


@pytest.fixture(scope="module")
def mqtt_endpoint(mqtt_url: str) -> MqttEndpoint:
    return parse_mqtt_url(mqtt_url)


@pytest.fixture
def sim_device(mqtt_endpoint: MqttEndpoint) -> Iterator[SimDeviceFactory]:
    """Start connected simulated devices: `sim_device("new")` -> id `e2e-new-<random>`.

    Each is seeded from its id, so its values differ from its neighbours' on the fleet page.
    Devices still running at teardown stop gracefully (retained `offline`, DISCONNECT).
    """
    started: list[SimDevice] = []

    def make(name: str) -> SimDevice:
        device_id = f"e2e-{name}-{uuid.uuid4().hex[:6]}"
        device = SimDevice(
            endpoint=mqtt_endpoint, device_id=device_id, seed=zlib.crc32(device_id.encode())
        )
        started.append(device)
        return device.start()

    yield make
    for device in started:
        device.stop()


# ---------------------------------------------------------------------------
# Browser
# ---------------------------------------------------------------------------


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, one for the whole e2e package."""
    if not CHROMIUM.is_file():
        reason = (
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
            "(./scripts/test installs it; or apt-get install chromium)"
        )
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def page(
    browser: Browser, live_fieldhub: FieldhubProcess, request: pytest.FixtureRequest
) -> Iterator[Page]:
    """A fresh browser context at desktop size whose relative URLs go to `live_fieldhub`.

    Uncaught JavaScript errors fail the test at teardown: a dashboard that throws has a bug even
    when the assertions passed. A failed test leaves `FAILED-<test>-*.png` screenshots behind.
    """
    context = browser.new_context(base_url=live_fieldhub.base_url, viewport=DESKTOP)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(f"{tab.url}: {exc}"))
    yield tab
    if request.node.stash.get(CALL_FAILED, False) and not tab.is_closed():
        try:
            take_screenshots(tab, f"FAILED-{request.node.name}")
        except Error:
            pass  # the page may be what broke; the test's own failure says why
    context.close()
    if errors:
        pytest.fail("uncaught JavaScript errors:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def shoot() -> Shoot:
    """`shoot(page, name)`: full-page screenshots at desktop (1440x900) and phone (390x844)
    width into `artifacts/screenshots/<name>-{desktop,phone}.png`; returns the paths."""
    return take_screenshots
