"""Driving Debian's chromium with Playwright in tests: launch settings and screenshots."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, ViewportSize

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = ROOT / "artifacts" / "screenshots"

# Debian's build, installed by scripts/test (ensure_chromium): `playwright install` downloads
# browser builds of its own, which these machines cannot fetch (docs/field-notes.md).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root, where chromium's sandbox refuses to start
    "--disable-background-networking",  # no update, safe-browsing or variations requests
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",  # a container's small /dev/shm crashes renderers of big pages
]

DESKTOP: ViewportSize = {"width": 1440, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}
VIEWPORTS: dict[str, ViewportSize] = {"desktop": DESKTOP, "phone": PHONE}

# The signature of the `shoot` fixture: shoot(page, name) -> the files written.
Shoot = Callable[[Page, str], list[Path]]


def _wait_for_layout(page: Page) -> None:
    # Two animation frames: resize observers (charts redraw to the new width) run in the first,
    # their layout is painted by the second.
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def take_screenshots(page: Page, name: str, directory: Path = SCREENSHOT_DIR) -> list[Path]:
    """Full-page screenshots of `page` at desktop and phone width: `<name>-desktop.png`,
    `<name>-phone.png`. The page keeps its own viewport afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    original = page.viewport_size
    paths = []
    try:
        for label, size in VIEWPORTS.items():
            page.set_viewport_size(size)
            _wait_for_layout(page)
            path = directory / f"{safe}-{label}.png"
            page.screenshot(path=str(path), full_page=True)
            paths.append(path)
    finally:
        if original is not None:
            page.set_viewport_size(original)
    return paths
