"""Credentials for a fieldhub started with authentication on (tests/security and any test
that passes `auth=True` to FieldhubProcess): users made in its database before it starts,
sessions and API tokens made through its HTTP API, as a real client would."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

import httpx

from fieldhub import clock
from fieldhub.security.passwords import hash_password
from fieldhub.security.tokens import hash_secret, new_api_token
from fieldhub.store.open import open_store
from fieldhub.store.types import ApiTokenRow, UserRow

ADMIN_USERNAME = "admin"


def new_password() -> str:
    """A random password fit for a test user (long, no placeholder)."""
    return secrets.token_urlsafe(18)


def add_user(db_url: str, username: str, password: str, role: str) -> None:
    """Put a user in the database (as `fieldhub users add` does), before fieldhub starts."""

    async def put() -> None:
        store = open_store(db_url)
        await store.open()
        try:
            now = clock.now_us()
            await store.put_user(
                UserRow(
                    username=username,
                    role=role,
                    password_hash=hash_password(password, username=username),
                    created_us=now,
                    updated_us=now,
                )
            )
        finally:
            await store.close()

    asyncio.run(put())


def add_token(db_url: str, role: str, *, created_by: str = "test-harness") -> str:
    """Put an API token in the database before fieldhub starts; the token. Made by no user,
    so no change to users (a fuzzer deleting one) revokes it."""
    token_id, token = new_api_token()

    async def put() -> None:
        store = open_store(db_url)
        await store.open()
        try:
            await store.insert_api_token(
                ApiTokenRow(
                    token_id=token_id,
                    name=f"{created_by}-{role}",
                    token_hash=hash_secret(token),
                    role=role,
                    created_by=created_by,
                    created_us=clock.now_us(),
                    expires_us=None,
                )
            )
        finally:
            await store.close()

    asyncio.run(put())
    return token


@dataclass
class Session:
    """A logged-in browser-like client: the session cookie in its jar, the CSRF token at hand."""

    client: httpx.Client
    csrf_token: str

    def close(self) -> None:
        self.client.close()


def login(base_url: str, username: str, password: str) -> Session:
    """Log in through POST /api/v1/auth/login; fails the test if refused."""
    client = httpx.Client(base_url=base_url, timeout=10.0)
    response = client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return Session(client=client, csrf_token=response.json()["csrf_token"])


def create_token(
    base_url: str,
    admin_token: str,
    *,
    role: str,
    name: str | None = None,
    expires_in_s: float | None = None,
) -> dict[str, object]:
    """POST /api/v1/tokens with an admin token: the answer (with `token`, shown once)."""
    body: dict[str, object] = {"name": name or f"test-{role}", "role": role}
    if expires_in_s is not None:
        body["expires_in_s"] = expires_in_s
    response = httpx.post(
        f"{base_url}/api/v1/tokens",
        json=body,
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10.0,
    )
    assert response.status_code == 201, response.text
    answer: dict[str, object] = response.json()
    return answer


def admin_token_by_login(base_url: str, username: str, password: str) -> str:
    """An admin API token made by logging in as the admin and creating it with the session
    (the CSRF token in its header, as the dashboard does)."""
    session = login(base_url, username, password)
    try:
        response = session.client.post(
            "/api/v1/tokens",
            json={"name": "test-admin", "role": "admin"},
            headers={"X-CSRF-Token": session.csrf_token},
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token
    finally:
        session.close()
