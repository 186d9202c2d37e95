"""A `fieldhub up` with authentication on for a browser test module, its admin's API client
and users of other roles (tests/e2e)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from support.auth import new_password
from support.fieldhub_process import FieldhubProcess


@contextmanager
def authed_fieldhub(data_dir: Path, mqtt_url: str) -> Iterator[FieldhubProcess]:
    """`fieldhub up` with authentication on, on an external broker where devices publish
    anonymously (the embedded one would need device credentials)."""
    fh = FieldhubProcess(data_dir=data_dir, auth=True, mqtt_url=mqtt_url)
    # Started from another thread: it puts the admin in the database with asyncio.run(), which
    # refuses to run on this thread while Playwright's sync API is alive (see conftest.py).
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(fh.start).result()
    try:
        yield fh
    finally:
        fh.stop()


@contextmanager
def admin_client(fh: FieldhubProcess) -> Iterator[httpx.Client]:
    """An HTTP client carrying the admin's API token."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        token = pool.submit(lambda: fh.admin_token).result()
    with httpx.Client(
        base_url=fh.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
    ) as client:
        yield client


def add_users(admin_api: httpx.Client, roles: Mapping[str, str]) -> dict[str, str]:
    """Users (username -> role) added by the admin through the API; their passwords."""
    made = {}
    for username, role in roles.items():
        password = new_password()
        answer = admin_api.post(
            "/api/v1/users", json={"username": username, "password": password, "role": role}
        )
        assert answer.status_code in (200, 201), answer.text
        made[username] = password
    return made
