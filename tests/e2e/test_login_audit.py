"""Signing in to the dashboard, in a real browser, against `fieldhub up` with authentication on.

The first admin is made through the one-time setup link `fieldhub up` prints; then, as an
operator would: open a device page (sent to the login page first), mistype the password (one
message that does not say whether the user exists), log in (back to the device page), send a
command to a simulated device that logs in to the broker with its own credentials, and find the
login and the command on the audit page. A viewer sees the device page without command controls
and is refused the audit page. Forms posted without their CSRF token are refused (403), a login
never redirects off-site, and a throttled login says when to retry. Also: the setup link makes
the first admin once; the admin page shows a new API token once and revokes it; a page whose
session ended elsewhere goes to the login page and back; demo mode leaves every page open and
says so in the header.

The pages are read through their DOM contract: `#login-error`, `#signed-in-user`,
`#signed-in-role`, `#logout`, `#commands-not-allowed`, audit rows `tr[data-seq]` with
`data-action`/`data-actor`, `#forbidden`.
"""

from __future__ import annotations

import contextlib
import re
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from playwright.sync_api import Error as PlaywrightError

from fieldhub.mqtt.endpoint import parse_mqtt_url
from support import auth as auth_support
from support.browser import DESKTOP, Shoot
from support.fieldhub_process import FieldhubProcess, wait_until
from support.sim_devices import SimDevice

# A page loads and its WebSocket subscribes within this (see test_dashboard.py); argon2 makes a
# login take tens of milliseconds more.
PAGE_MS = 15_000
# A native command is acked in milliseconds on loopback; the rest is headroom for a busy box.
ACK_MS = 10_000

ADMIN = auth_support.ADMIN_USERNAME
VIEWER = "vic"
VIEWER_PASSWORD = "just looking, thanks"
WRONG_LOGIN = "Wrong username or password."

SETUP_LINK = re.compile(r"/setup\?token=([A-Za-z0-9_-]+)")
FIELD = r'name="{}" value="([^"]*)"'
META_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]*)">')


def form_field(html: str, name: str) -> str:
    match = re.search(FIELD.format(re.escape(name)), html)
    assert match, f"no {name} field in the page"
    return match.group(1)


def setup_token(fh: FieldhubProcess) -> str | None:
    """The one-time setup token from the link `fieldhub up` printed, once it has."""
    match = SETUP_LINK.search(fh.log_path.read_text(errors="replace"))
    return match.group(1) if match else None


@pytest.fixture(scope="module")
def live_fieldhub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldhubProcess]:
    """`fieldhub up` with authentication on and an admin (conftest's runs in demo mode)."""
    fh = FieldhubProcess(data_dir=tmp_path_factory.mktemp("e2e-login"), auth=True)
    # Started from another thread: it puts the admin in the database with asyncio.run(), which
    # refuses to run on this thread while Playwright's sync API is alive (see conftest.py).
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(fh.start).result()
    yield fh
    fh.stop()


def admin_password(fh: FieldhubProcess) -> str:
    assert fh.admin_password is not None
    return fh.admin_password


def form_login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    """Log in through the login page's form, as a browser does (its CSRF field and cookie)."""
    form = client.get("/login")
    assert form.status_code == 200, form.text
    data = {
        "username": username,
        "password": password,
        "csrf_token": form_field(form.text, "csrf_token"),
    }
    return client.post("/login", data=data)


@pytest.fixture(scope="module")
def admin_http(live_fieldhub: FieldhubProcess) -> Iterator[httpx.Client]:
    """An HTTP client signed in as the admin through the login form."""
    with httpx.Client(base_url=live_fieldhub.base_url, timeout=10.0) as client:
        answer = form_login(client, ADMIN, admin_password(live_fieldhub))
        assert answer.status_code == 303, answer.text
        yield client


def api_csrf(client: httpx.Client) -> dict[str, str]:
    """The X-CSRF-Token header for the client's session, read from a page as the JS does."""
    match = META_CSRF.search(client.get("/system").text)
    assert match, "no CSRF token in the page"
    assert match.group(1), "an empty CSRF token in the page"
    return {"X-CSRF-Token": match.group(1)}


@pytest.fixture(scope="module")
def viewer(admin_http: httpx.Client) -> str:
    """A viewer account, added by the admin through the API as the users page does."""
    response = admin_http.post(
        "/api/v1/users",
        json={"username": VIEWER, "password": VIEWER_PASSWORD, "role": "viewer"},
        headers=api_csrf(admin_http),
    )
    assert response.status_code in (200, 201), response.text
    return VIEWER


@pytest.fixture(scope="module")
def device(live_fieldhub: FieldhubProcess, admin_http: httpx.Client) -> Iterator[SimDevice]:
    """A simulated native device with its own broker credentials, known to fieldhub."""
    device_id = f"e2e-login-{uuid.uuid4().hex[:6]}"
    issued = admin_http.post(
        f"/api/v1/devices/{device_id}/credentials", headers=api_csrf(admin_http)
    )
    assert issued.status_code == 201, issued.text
    secret = issued.json()
    url = (
        f"mqtt://{quote(secret['username'], safe='')}:{quote(secret['password'], safe='')}"
        f"@127.0.0.1:{live_fieldhub.mqtt_port}"
    )
    sim = SimDevice(
        endpoint=parse_mqtt_url(url), device_id=device_id, seed=zlib.crc32(device_id.encode())
    ).start()
    sim.publish()

    def format_known() -> str | None:
        response = admin_http.get(f"/api/v1/devices/{device_id}/command-types")
        return response.json().get("format") if response.status_code == 200 else None

    wait_until(lambda: format_known() == "native", what=f"{device_id} to be known")
    yield sim
    sim.stop()


@pytest.fixture
def second_context(browser: Browser, live_fieldhub: FieldhubProcess) -> Iterator[BrowserContext]:
    """Another browser (its own cookies), for a second person."""
    context = browser.new_context(base_url=live_fieldhub.base_url, viewport=DESKTOP)
    yield context
    context.close()


def log_in(page: Page, username: str, password: str) -> None:
    page.locator('#login-form input[name="username"]').fill(username)
    page.locator('#login-form input[name="password"]').fill(password)
    page.locator('#login-form button[type="submit"]').click()


def audit_rows(page: Page, action: str, actor: str) -> Any:
    return page.locator(f'#audit tr[data-action="{action}"][data-actor="{actor}"]')


def test_login_send_command_and_see_it_audited(
    page: Page, live_fieldhub: FieldhubProcess, device: SimDevice, shoot: Shoot
) -> None:
    """Sent to the login page, a wrong password, then in; a command from the device page; the
    login and the command on the audit page."""
    device_path = f"/devices/{device.id}"
    page.goto(device_path)
    expect(page).to_have_url(re.compile(r"/login\?next=" + re.escape(quote(device_path, safe=""))))
    expect(page.locator("#signed-in-user")).to_have_count(0)
    shoot(page, "login")

    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        log_in(page, ADMIN, "not the password")
    assert answer.value.status == 401
    expect(page.locator("#login-error")).to_have_text(WRONG_LOGIN)
    # The same message for a user that does not exist: nothing tells the two apart.
    log_in(page, "nobody-here", "not the password")
    expect(page.locator("#login-error")).to_have_text(WRONG_LOGIN)
    shoot(page, "login-wrong-password")

    log_in(page, ADMIN, admin_password(live_fieldhub))
    expect(page).to_have_url(re.compile(re.escape(device_path) + "$"), timeout=PAGE_MS)
    expect(page.locator("#signed-in-user")).to_have_text(ADMIN)
    expect(page.locator("#signed-in-role")).to_have_text("admin")
    # The live socket opens with the session cookie.
    expect(page.locator("body")).to_have_attribute("data-live", "connected", timeout=PAGE_MS)

    ping = page.locator('form.command[data-command="ping"]')
    expect(ping).to_have_count(1, timeout=PAGE_MS)
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/commands"), timeout=PAGE_MS
    ) as sent:
        ping.locator("button[type=submit]").click()
    assert sent.value.status == 201, sent.value.text()
    command_id = sent.value.json()["id"]
    row = page.locator(f'#command-log tr[data-command-id="{command_id}"] td.state')
    expect(row).to_have_attribute("data-state", "succeeded", timeout=ACK_MS)

    page.goto("/audit")
    expect(page.locator("#audit")).to_be_visible()
    expect(audit_rows(page, "login", ADMIN)).not_to_have_count(0)
    expect(audit_rows(page, "login_failed", "anonymous")).not_to_have_count(0)
    sent_row = audit_rows(page, "command.send", ADMIN)
    expect(sent_row).to_have_count(1)
    expect(sent_row.locator("td.target")).to_contain_text(f"command:{command_id}")
    expect(sent_row.locator("td.address")).to_have_text("127.0.0.1")
    # Newest first: the command came after the login.
    actions = page.locator("#audit tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.action)"
    )
    assert actions.index("command.send") < actions.index("login"), actions
    shoot(page, "audit")

    # The filters narrow to one action.
    page.locator('#audit-filters input[name="action"]').fill("command.send")
    page.locator('#audit-filters button[type="submit"]').click()
    expect(page).to_have_url(re.compile(r"/audit\?.*action=command\.send"))
    expect(page.locator("#audit tbody tr")).to_have_count(1)

    page.locator("#logout").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/audit")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Faudit$"))


def test_viewer_sees_no_command_controls_and_no_audit(
    second_context: BrowserContext, viewer: str, device: SimDevice, shoot: Shoot
) -> None:
    page = second_context.new_page()
    page.goto("/login")
    log_in(page, viewer, VIEWER_PASSWORD)
    expect(page).to_have_url(re.compile(r"/$"), timeout=PAGE_MS)
    expect(page.locator("#signed-in-role")).to_have_text("viewer")
    # No links to the admin pages for a viewer.
    expect(page.locator('nav a[href="/audit"]')).to_have_count(0)

    page.goto(f"/devices/{device.id}")
    expect(page.locator("#commands-not-allowed")).to_be_visible(timeout=PAGE_MS)
    expect(page.locator("form.command")).to_have_count(0)
    shoot(page, "device-viewer")

    response = page.goto("/audit")
    assert response is not None
    assert response.status == 403
    expect(page.locator("#forbidden")).to_contain_text("admin")


def test_forms_without_their_csrf_token_are_refused(
    live_fieldhub: FieldhubProcess, admin_http: httpx.Client
) -> None:
    with httpx.Client(base_url=live_fieldhub.base_url, timeout=10.0) as client:
        form = client.get("/login")
        assert form.status_code == 200
        token = form_field(form.text, "csrf_token")
        credentials = {"username": ADMIN, "password": admin_password(live_fieldhub)}
        # No field (the double-submit cookie alone proves nothing: a browser sends it anyway).
        refused = client.post("/login", data=credentials)
        assert refused.status_code == 403
        assert "fieldhub_session" not in client.cookies
        # A field but not the cookie's value.
        forged = client.post("/login", data={**credentials, "csrf_token": token[::-1]})
        assert forged.status_code == 403
        # With both, and a `next` that leaves the site: signed in, but sent home.
        signed_in = client.post(
            "/login", data={**credentials, "csrf_token": token, "next": "//evil.example/x"}
        )
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/"
        assert client.cookies.get("fieldhub_session")

        # Logging out is a form too: without the session's token it is refused and the
        # session lives on.
        assert client.post("/logout", data={}).status_code == 403
        assert client.get("/system").status_code == 200
        out = client.post("/logout", data={"csrf_token": api_csrf(client)["X-CSRF-Token"]})
        assert out.status_code == 303
        assert client.get("/system").status_code == 303


def test_throttled_login_says_when_to_retry(live_fieldhub: FieldhubProcess) -> None:
    # From another loopback address, so the lock on it leaves the other tests' logins alone.
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=live_fieldhub.base_url, transport=transport, timeout=10.0) as client:
        token = form_field(client.get("/login").text, "csrf_token")
        attempt = {"username": "mallory", "password": "guess guess guess", "csrf_token": token}
        statuses = [client.post("/login", data=attempt).status_code for _ in range(6)]
        assert statuses[0] == 401
        assert statuses[-1] == 429, statuses
        throttled = client.post("/login", data=attempt)
        assert throttled.status_code == 429
        wait = int(throttled.headers["retry-after"])
        assert wait > 0
        message = re.search(r'id="login-error"[^>]*>([^<]*)<', throttled.text)
        assert message, throttled.text
        retry = r"Too many failed attempts\. Try again in \d+ (seconds|minutes)\."
        assert re.fullmatch(retry, message.group(1)), message.group(1)


@pytest.fixture
def fresh_fieldhub(tmp_path: Path) -> Iterator[FieldhubProcess]:
    """`fieldhub up` with authentication on and no user yet: it prints a setup link."""
    fh = FieldhubProcess(data_dir=tmp_path / "fresh", env={"FIELDHUB_AUTH": "true"}).start()
    yield fh
    fh.stop()


def test_setup_link_makes_the_first_admin_once(
    browser: Browser, fresh_fieldhub: FieldhubProcess, shoot: Shoot
) -> None:
    token = wait_until(lambda: setup_token(fresh_fieldhub), what="the setup link in the log")
    context = browser.new_context(base_url=fresh_fieldhub.base_url, viewport=DESKTOP)
    try:
        page = context.new_page()
        # Before any user exists, the login page says where to start.
        page.goto("/")
        expect(page.locator("#needs-setup")).to_be_visible()

        page.goto(f"/setup?token={token}")
        form = page.locator("#setup-form")
        form.locator('input[name="username"]').fill("ada")
        form.locator('input[name="password"]').fill("pale blue dot 1990")
        form.locator('input[name="confirm"]').fill("pale blue dot 1991")
        form.locator('button[type="submit"]').click()
        expect(page.locator("#setup-error")).to_have_text("The two passwords differ.")
        shoot(page, "setup")

        form.locator('input[name="password"]').fill("pale blue dot 1990")
        form.locator('input[name="confirm"]').fill("pale blue dot 1990")
        form.locator('button[type="submit"]').click()
        expect(page).to_have_url(re.compile(r"/$"), timeout=PAGE_MS)
        expect(page.locator("#signed-in-user")).to_have_text("ada")
        expect(page.locator("#signed-in-role")).to_have_text("admin")

        # The link has done its work.
        response = page.goto(f"/setup?token={token}")
        assert response is not None
        assert response.status == 410
        expect(page.locator("#setup-done")).to_be_visible()
    finally:
        context.close()


def test_admin_page_shows_a_new_token_once_and_revokes_it(
    page: Page, live_fieldhub: FieldhubProcess, shoot: Shoot
) -> None:
    page.goto("/admin")
    log_in(page, ADMIN, admin_password(live_fieldhub))
    expect(page).to_have_url(re.compile(r"/admin$"), timeout=PAGE_MS)
    expect(page.locator(f'#users tr[data-username="{ADMIN}"]')).to_have_count(1)

    form = page.locator("#token-form")
    form.locator('input[name="name"]').fill("grafana")
    form.locator('select[name="role"]').select_option("viewer")
    form.locator('button[type="submit"]').click()
    shown = page.locator("#new-token-value")
    expect(shown).to_have_text(re.compile(r"^fh_[0-9a-f]{12}_\S+$"), timeout=PAGE_MS)
    token = shown.inner_text()
    token_id = token.split("_")[1]
    row = page.locator(f'#tokens tr[data-token-id="{token_id}"]')
    expect(row).to_have_count(1)
    shoot(page, "admin-new-token")

    # The token works for a program, as a viewer.
    api = httpx.get(
        f"{live_fieldhub.base_url}/api/v1/system",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10.0,
    )
    assert api.status_code == 200, api.text

    # Shown once: after a reload the page lists the token without its secret.
    page.reload()
    expect(row).to_have_count(1)
    assert token not in page.content()

    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button.revoke").click()
    expect(row).to_have_class(re.compile(r"\brevoked\b"), timeout=PAGE_MS)
    refused = httpx.get(
        f"{live_fieldhub.base_url}/api/v1/system",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10.0,
    )
    assert refused.status_code == 401


def test_an_ended_session_sends_the_page_to_login(
    page: Page, live_fieldhub: FieldhubProcess, device: SimDevice
) -> None:
    """Signed out elsewhere (another tab, an admin disabling the user), the open page goes to
    the login page the next time it talks to the API, and comes back after it."""
    device_path = f"/devices/{device.id}"
    page.goto(device_path)
    log_in(page, ADMIN, admin_password(live_fieldhub))
    expect(page).to_have_url(re.compile(re.escape(device_path) + "$"), timeout=PAGE_MS)
    ping = page.locator('form.command[data-command="ping"] button[type=submit]')
    expect(ping).to_have_count(1, timeout=PAGE_MS)

    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    ended = page.request.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf or ""})
    assert ended.status == 204, ended.text()

    # Either the click's API call meets the ended session, or the live socket's periodic
    # re-check (api/routes/live.py) already sent the page to the login page: both are the
    # behaviour under test, and which comes first is a race the test must not lose.
    with contextlib.suppress(PlaywrightError):
        ping.click(timeout=PAGE_MS)
    expect(page).to_have_url(
        re.compile(r"/login\?next=" + re.escape(quote(device_path, safe=""))), timeout=PAGE_MS
    )
    log_in(page, ADMIN, admin_password(live_fieldhub))
    expect(page).to_have_url(re.compile(re.escape(device_path) + "$"), timeout=PAGE_MS)


def test_demo_mode_pages_are_open_and_say_so(tmp_path: Path) -> None:
    fh = FieldhubProcess(data_dir=tmp_path / "demo").start()  # auth off: demo mode
    try:
        for path in ("/", "/system", "/dead-letters", "/audit"):
            page = fh.get(path)
            assert page.status_code == 200, (path, page.text[:300])
            assert "demo mode: no authentication, 127.0.0.1 only" in page.text, path
            assert 'id="logout"' not in page.text, path
        assert httpx.get(f"{fh.base_url}/login", timeout=10.0).headers["location"] == "/"
    finally:
        fh.stop()
