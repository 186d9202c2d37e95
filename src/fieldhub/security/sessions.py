"""Browser sessions: how long they live, when they are touched, what the cookies are called."""

from __future__ import annotations

from fieldhub.clock import US_PER_S
from fieldhub.store.types import SessionRow

SESSION_COOKIE = "fieldhub_session"
# The login and setup forms come before any session: a double-submit cookie protects them.
LOGIN_CSRF_COOKIE = "fieldhub_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

IDLE_S = 12 * 3600
ABSOLUTE_S = 7 * 86400
# A session's last_seen is written at most this often: every request writing it would make
# each page view (a dozen API calls) a dozen writes; a minute is nothing against 12 h idle.
TOUCH_EVERY_S = 60
# How often expired sessions are deleted (they are refused when used anyway).
HOUSEKEEPING_INTERVAL_S = 600.0


def is_live(row: SessionRow, now_us: int, *, idle_s: float = IDLE_S) -> bool:
    """Whether the session is neither past its absolute end nor idle too long."""
    return row.expires_us > now_us and row.last_seen_us + int(idle_s * US_PER_S) > now_us


def due_for_touch(last_us: int | None, now_us: int) -> bool:
    """Whether a last-seen/last-used time is stale enough to be written again."""
    return last_us is None or now_us - last_us >= TOUCH_EVERY_S * US_PER_S
