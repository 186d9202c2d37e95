"""The Jinja2 environment every page renders with: filters, globals and who is looking.

Kept apart from the routes so the dashboard pages (pages.py) and the sign-in pages (login.py)
share one environment, and every template sees the signed-in principal (header, CSRF meta tag,
role-gated controls) without each route passing it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates

from fieldhub import __version__
from fieldhub.protocol.timestamps import format_us
from fieldhub.web.access import page_context

HERE = Path(__file__).parent


def format_value(value: float) -> str:
    """A reading as the dashboard shows it: at most two decimals, no trailing zeros.

    static/format.js formats live values the same way (`formatValue`); keep them in step.
    """
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _ago(ts_us: int | None) -> str:
    if ts_us is None:
        return ""
    seconds = max(0, int(time.time() - ts_us / 1e6))
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _auth_context(request: Request) -> dict[str, Any]:
    return page_context(request)


templates = Jinja2Templates(directory=HERE / "templates", context_processors=[_auth_context])
templates.env.filters["value"] = format_value
templates.env.filters["iso"] = lambda us: format_us(us) if us is not None else ""
templates.env.filters["ago"] = _ago
templates.env.globals["version"] = __version__
