"""Authentication over HTTP and the WebSocket against a real `fieldhub up` with auth on:
401 without credentials, 403 below the role, expired and revoked tokens, CSRF, the throttle,
the WebSocket's credentials and Origin, the audit log, and no secret in any answer."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from fieldhub.api.auth import PUBLIC_PATHS
from support.auth import ADMIN_USERNAME, create_token, login
from support.fieldhub_process import FieldhubProcess

DEVICE = "sec-dev-1"
# A value for each path parameter of the API: the route must refuse before looking it up.
PATH_VALUES = {
    "device_id": DEVICE,
    "command_id": "c-1",
    "node_id": "aabbccddeeff",
    "profile": "native",
    "username": "someone",
    "token_id": "0123456789ab",
    "rule_id": "some-rule",
    "version": "1",
    "alarm_id": "0b0e2f7c-5a3f-4c1e-9d5e-000000000000",
    "decision_id": "0b0e2f7c-5a3f-4c1e-9d5e-000000000001",
}


@pytest.fixture(scope="module")
def fh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldhubProcess]:
    process = FieldhubProcess(data_dir=tmp_path_factory.mktemp("fh-auth"), auth=True).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def tokens(fh: FieldhubProcess) -> dict[str, Any]:
    """A token per role (answers of POST /api/v1/tokens), made with the admin's token."""
    made = {
        role: create_token(fh.base_url, fh.admin_token, role=role)
        for role in ("viewer", "operator")
    }
    made["admin"] = {"token": fh.admin_token}
    return made


def bearer(token: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def operations(fh: FieldhubProcess) -> list[tuple[str, str]]:
    """(method, concrete path) of every operation in the app's OpenAPI document."""
    schema = httpx.get(f"{fh.base_url}/openapi.json", timeout=10).json()
    found = []
    for path, item in schema["paths"].items():
        concrete = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)
        for method in item:
            found.append((method.upper(), concrete if path not in PUBLIC_PATHS else path))
    return found


def test_every_route_but_the_public_ones_answers_401_without_credentials(
    fh: FieldhubProcess,
) -> None:
    ops = operations(fh)
    assert len(ops) > 40
    checked = 0
    with httpx.Client(base_url=fh.base_url, timeout=10) as client:
        for method, path in ops:
            if path in PUBLIC_PATHS:
                continue
            for headers in (
                {},
                {"Authorization": "Bearer fh_0123456789ab_" + "A" * 43},
                {"Authorization": "Basic YWRtaW46YWRtaW4="},
                {"Cookie": "fieldhub_session=made-up"},
            ):
                body = {} if method in ("POST", "PUT", "PATCH") else None
                response = client.request(
                    method, path, json=body, headers=headers, params={"topic": "x"}
                )
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"] == 'Bearer realm="fieldhub"'
                checked += 1
    assert checked >= 4 * 40
    assert httpx.get(f"{fh.base_url}/healthz").status_code == 200
    assert httpx.get(f"{fh.base_url}/metrics").status_code == 401


def test_viewer_reads_but_may_not_command(fh: FieldhubProcess, tokens: dict[str, Any]) -> None:
    viewer = bearer(tokens["viewer"]["token"])
    base = fh.base_url
    assert httpx.get(f"{base}/api/v1/devices", headers=viewer).status_code == 200
    assert httpx.get(f"{base}/metrics", headers=viewer).status_code == 200
    refused = [
        httpx.post(
            f"{base}/api/v1/devices/{DEVICE}/commands", json={"name": "ping"}, headers=viewer
        ),
        httpx.delete(f"{base}/api/v1/devices/{DEVICE}/commands/c-1", headers=viewer),
        httpx.post(
            f"{base}/api/nodes/aabbccddeeff/actions", json={"action": "REBOOT"}, headers=viewer
        ),
        httpx.post(
            f"{base}/api/v1/ingest/native",
            params={"topic": f"devices/{DEVICE}/t"},
            content=b"{}",
            headers=viewer,
        ),
        httpx.post(
            f"{base}/api/gateway-readings", json={"macAddress": "x", "rssi": 1}, headers=viewer
        ),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
    assert refused[0].json()["error"]["code"] == "forbidden"
    assert "detail" in refused[2].json()  # the FastAPI stack's error shape
    assert refused[4].json()["statusCode"] == 403  # the Flask stack's


def test_operator_may_not_manage_users_tokens_or_read_the_audit(
    fh: FieldhubProcess, tokens: dict[str, Any]
) -> None:
    operator = bearer(tokens["operator"]["token"])
    base = fh.base_url
    answers = [
        httpx.get(f"{base}/api/v1/users", headers=operator),
        httpx.post(
            f"{base}/api/v1/users",
            headers=operator,
            json={"username": "eve", "password": "a good long password"},
        ),
        httpx.get(f"{base}/api/v1/tokens", headers=operator),
        httpx.post(f"{base}/api/v1/tokens", headers=operator, json={"name": "x"}),
        httpx.delete(f"{base}/api/v1/tokens/0123456789ab", headers=operator),
        httpx.get(f"{base}/api/v1/audit", headers=operator),
    ]
    assert [a.status_code for a in answers] == [403] * len(answers)
    me = httpx.get(f"{base}/api/v1/auth/me", headers=operator).json()
    assert me["role"] == "operator"
    assert me["kind"] == "token"


def test_expired_and_revoked_tokens_answer_401(fh: FieldhubProcess, tokens: dict[str, Any]) -> None:
    base = fh.base_url
    short = create_token(base, fh.admin_token, role="viewer", expires_in_s=1.0)
    assert httpx.get(f"{base}/api/v1/devices", headers=bearer(short["token"])).status_code == 200
    time.sleep(1.2)
    expired = httpx.get(f"{base}/api/v1/devices", headers=bearer(short["token"]))
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]

    doomed = create_token(base, fh.admin_token, role="operator")
    headers = bearer(doomed["token"])
    assert httpx.get(f"{base}/api/v1/devices", headers=headers).status_code == 200
    revoke = httpx.delete(
        f"{base}/api/v1/tokens/{doomed['token_id']}", headers=bearer(fh.admin_token)
    )
    assert revoke.status_code == 200
    assert revoke.json()["revoked_at"] is not None
    assert httpx.get(f"{base}/api/v1/devices", headers=headers).status_code == 401


def test_cookie_requests_that_change_state_need_the_csrf_token(fh: FieldhubProcess) -> None:
    assert fh.admin_password is not None
    session = login(fh.base_url, ADMIN_USERNAME, fh.admin_password)
    try:
        cookie = session.client.cookies.get("fieldhub_session")
        assert cookie
        me = session.client.get("/api/v1/auth/me")
        assert me.status_code == 200
        assert me.json()["csrf_token"] == session.csrf_token
        refused = session.client.post("/api/v1/tokens", json={"name": "from the browser"})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "csrf_failed"
        wrong = session.client.post(
            "/api/v1/tokens", json={"name": "x"}, headers={"X-CSRF-Token": "not it"}
        )
        assert wrong.status_code == 403
        made = session.client.post(
            "/api/v1/tokens",
            json={"name": "from the browser"},
            headers={"X-CSRF-Token": session.csrf_token},
        )
        assert made.status_code == 201, made.text
        out = session.client.post(
            "/api/v1/auth/logout", headers={"X-CSRF-Token": session.csrf_token}
        )
        assert out.status_code == 204
        # The cookie's session is gone on the server, not only in this client's jar.
        again = httpx.get(f"{fh.base_url}/api/v1/auth/me", cookies={"fieldhub_session": cookie})
        assert again.status_code == 401
    finally:
        session.close()


def ws_url(fh: FieldhubProcess) -> str:
    return f"ws://127.0.0.1:{fh.http_port}/api/v1/live"


def test_websocket_needs_credentials_and_its_own_origin(
    fh: FieldhubProcess, tokens: dict[str, Any]
) -> None:
    url = ws_url(fh)
    with pytest.raises(InvalidStatus) as caught:
        connect(url, open_timeout=5).close()
    assert caught.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(url, additional_headers=bearer("fh_0123456789ab_" + "A" * 43), open_timeout=5)
    viewer = bearer(tokens["viewer"]["token"])
    with pytest.raises(InvalidStatus) as caught:
        connect(url, additional_headers=viewer, origin="http://evil.example", open_timeout=5)
    assert caught.value.response.status_code == 403
    with connect(url, additional_headers=viewer, open_timeout=5) as ws:
        assert '"hello"' in str(ws.recv(timeout=5))
    own = f"http://127.0.0.1:{fh.http_port}"
    assert fh.admin_password is not None
    session = login(fh.base_url, ADMIN_USERNAME, fh.admin_password)
    try:
        cookie = session.client.cookies["fieldhub_session"]
        with connect(
            url,
            additional_headers={"Cookie": f"fieldhub_session={cookie}"},
            origin=own,
            open_timeout=5,
        ) as ws:
            assert '"hello"' in str(ws.recv(timeout=5))
        with pytest.raises(InvalidStatus):
            connect(
                url,
                additional_headers={"Cookie": f"fieldhub_session={cookie}"},
                origin="http://127.0.0.1.evil.example",
                open_timeout=5,
            )
    finally:
        session.close()


def test_logins_and_commands_are_audited_with_the_address(
    fh: FieldhubProcess, tokens: dict[str, Any]
) -> None:
    base = fh.base_url
    operator = tokens["operator"]
    stored = httpx.post(
        f"{base}/api/v1/ingest/native",
        params={"topic": f"devices/{DEVICE}/telemetry"},
        content=b'{"temperature": 19.5}',
        headers=bearer(operator["token"]),
    )
    assert stored.status_code == 201, stored.text
    sent = httpx.post(
        f"{base}/api/v1/devices/{DEVICE}/commands",
        json={"name": "ping"},
        headers=bearer(operator["token"]),
    )
    assert sent.status_code == 201, sent.text
    command_id = sent.json()["id"]
    cancelled = httpx.delete(
        f"{base}/api/v1/devices/{DEVICE}/commands/{command_id}", headers=bearer(operator["token"])
    )
    assert cancelled.status_code in (200, 409)
    failed = httpx.post(
        f"{base}/api/v1/auth/login",
        json={"username": "nobody-here", "password": "wrong password 1"},
    )
    assert failed.status_code == 401
    assert fh.admin_password is not None
    login(base, ADMIN_USERNAME, fh.admin_password).close()

    def entries(action: str) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{base}/api/v1/audit",
            params={"action": action, "limit": 100},
            headers=bearer(fh.admin_token),
        )
        assert answer.status_code == 200, answer.text
        data: list[dict[str, Any]] = answer.json()["data"]
        return data

    (send,) = [e for e in entries("command.send") if command_id in (e["target"] or "")]
    assert send["actor"] == f"token:{operator['token_id']}"
    assert send["target"] == f"device:{DEVICE}/command:{command_id}"
    assert send["address"] == "127.0.0.1"
    assert send["outcome"] == "ok"
    assert send["detail"]["name"] == "ping"
    assert any(command_id in (e["target"] or "") for e in entries("command.cancel"))
    bad = [e for e in entries("login_failed") if e["target"] == "user:nobody-here"]
    assert bad
    assert bad[0]["address"] == "127.0.0.1"
    assert bad[0]["actor"] == "anonymous"
    assert any(
        e["actor"] == ADMIN_USERNAME and e["address"] == "127.0.0.1" for e in entries("login")
    )
    assert any(e["actor"] == ADMIN_USERNAME for e in entries("token.create"))


def test_no_secret_in_any_answer_or_the_log_after_creation(
    fh: FieldhubProcess, tokens: dict[str, Any]
) -> None:
    base = fh.base_url
    admin = bearer(fh.admin_token)
    password = "a password for frank 42"
    made = httpx.post(
        f"{base}/api/v1/users",
        headers=admin,
        json={"username": "frank", "password": password, "role": "viewer"},
    )
    assert made.status_code == 201, made.text
    assert password not in made.text
    session = login(base, "frank", password)
    cookie = session.client.cookies["fieldhub_session"]
    session.close()
    secrets = {
        password,
        fh.admin_token,
        tokens["viewer"]["token"],
        tokens["operator"]["token"],
        cookie,
    }
    assert fh.admin_password is not None
    secrets.add(fh.admin_password)
    answers = [
        httpx.get(f"{base}{path}", headers=admin).text
        for path in (
            "/api/v1/users",
            "/api/v1/tokens",
            "/api/v1/audit?limit=1000",
            "/api/v1/users/frank",
            "/api/v1/auth/me",
        )
    ]
    listed = httpx.get(f"{base}/api/v1/tokens", headers=admin).json()["data"]
    assert listed
    assert all("token" not in t and "token_hash" not in t for t in listed)
    assert any(t["last_used_at"] for t in listed)
    log = Path(fh.log_path).read_text(errors="replace")
    for secret in secrets:
        for text in [*answers, log]:
            assert secret not in text
    # Nor the hashes: a sha256 of a token is as good as the token to whoever has the database.
    assert not re.search(r"\$argon2id\$", "".join(answers))


def test_repeated_wrong_passwords_are_throttled(tmp_path: Path) -> None:
    """Its own fieldhub: the lock is per address too, and would lock out the other tests."""
    process = FieldhubProcess(data_dir=tmp_path / "fh", auth=True).start()
    try:
        codes = []
        for _ in range(10):
            answer = httpx.post(
                f"{process.base_url}/api/v1/auth/login",
                json={"username": ADMIN_USERNAME, "password": "not the password"},
            )
            codes.append(answer.status_code)
        assert codes[:5] == [401] * 5
        assert codes[5:] == [429] * 5
        assert 0 < int(answer.headers["retry-after"]) <= 15
        assert answer.json()["error"]["code"] == "throttled"
        # Even the right password waits out the lock.
        assert process.admin_password is not None
        right = httpx.post(
            f"{process.base_url}/api/v1/auth/login",
            json={"username": ADMIN_USERNAME, "password": process.admin_password},
        )
        assert right.status_code == 429
    finally:
        process.stop()
