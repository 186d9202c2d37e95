"""No secret fieldhub makes or is given ever leaves it again: every action that creates or uses
one is done at debug log level, then fieldhub's log, Mosquitto's log, every file of the data dir
but the database and the secrets file, and every later API answer are searched for each secret.
(tests/conftest.py also searches every log of the whole run for the secrets tests remember.)"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from broker.clients import connect
from support.auth import ADMIN_USERNAME, new_password
from support.fieldhub_process import FieldhubProcess
from support.secrets import remember

# Files that hold secrets (hashed in the database; fieldhub's own logins in the secrets file).
HOLDERS = ("fieldhub.db", "fieldhub.db-wal", "fieldhub.db-shm", "mqtt-clients.json")


def test_no_secret_reaches_a_log_a_file_or_an_answer(tmp_path: Path) -> None:
    fh = FieldhubProcess(
        data_dir=tmp_path / "fh", auth=True, extra_args=["--log-level", "debug"]
    ).start()
    secrets: list[str] = []
    answers: list[str] = []
    try:
        base = fh.base_url
        admin = {"Authorization": f"Bearer {fh.admin_token}"}
        assert fh.admin_password is not None
        secrets += [fh.admin_token, fh.admin_password]

        # A failed login with a near-miss password, and a good one.
        wrong = fh.admin_password + "x"
        secrets.append(wrong)
        bad = httpx.post(
            f"{base}/api/v1/auth/login",
            json={"username": ADMIN_USERNAME, "password": wrong},
            timeout=10,
        )
        assert bad.status_code == 401
        answers.append(bad.text)

        # A user, their password reset, a token made and revoked, a device provisioned,
        # rotated and revoked, and a device login with a wrong secret.
        first, second = new_password(), new_password()
        secrets += [first, second]
        made = httpx.post(
            f"{base}/api/v1/users",
            json={"username": "olga", "password": first, "role": "operator"},
            headers=admin,
            timeout=10,
        )
        assert made.status_code == 201, made.text
        reset = httpx.put(
            f"{base}/api/v1/users/olga/password", json={"password": second}, headers=admin
        )
        assert reset.status_code == 204, reset.text
        token = httpx.post(
            f"{base}/api/v1/tokens", json={"name": "ci", "role": "viewer"}, headers=admin
        ).json()
        secrets.append(token["token"])
        httpx.get(
            f"{base}/api/v1/devices", headers={"Authorization": f"Bearer {token['token']}"}
        ).raise_for_status()
        httpx.delete(f"{base}/api/v1/tokens/{token['token_id']}", headers=admin)
        revoked = httpx.get(
            f"{base}/api/v1/devices", headers={"Authorization": f"Bearer {token['token']}"}
        )
        assert revoked.status_code == 401
        answers.append(revoked.text)

        issued = httpx.post(f"{base}/api/v1/devices/leak-1/credentials", headers=admin).json()
        rotated = httpx.post(f"{base}/api/v1/devices/leak-1/credentials", headers=admin).json()
        secrets += [issued["password"], rotated["password"]]
        assert fh.mqtt_port is not None
        connect("127.0.0.1", fh.mqtt_port, username="leak-1", password=issued["password"], expect=5)
        connect("127.0.0.1", fh.mqtt_port, username="leak-1", password=rotated["password"]).stop()
        httpx.delete(f"{base}/api/v1/devices/leak-1/credentials", headers=admin)

        # Everything the API answers afterwards about these things.
        for path in (
            "/api/v1/users",
            "/api/v1/users/olga",
            "/api/v1/tokens",
            "/api/v1/audit?limit=500",
            "/api/v1/device-credentials",
            "/api/v1/devices/leak-1/credentials",
            "/api/v1/system",
            "/healthz",
        ):
            answers.append(httpx.get(f"{base}{path}", headers=admin, timeout=10).text)
        audit = httpx.get(f"{base}/api/v1/audit?limit=500", headers=admin).json()
        assert len(json.dumps(audit)) > 200  # the audit log has the story
    finally:
        fh.stop()
    remember(*secrets)
    logins = json.loads((fh.data_dir / "secrets" / "mqtt-clients.json").read_text())
    secrets += [login["password"] for login in logins.values()]

    searched = {"answers": "\n".join(answers)}
    for path in Path(fh.data_dir).rglob("*"):
        if path.is_file() and path.name not in HOLDERS:
            searched[str(path)] = path.read_text(errors="replace")
    assert any(name.endswith("fieldhub.log") for name in searched), "fieldhub's log is missing"
    assert any(name.endswith("mosquitto.log") for name in searched), "Mosquitto's log is missing"
    assert len(searched["answers"]) > 1000
    leaks = [
        f"{where}: {secret[:4]}..."
        for where, text in searched.items()
        for secret in secrets
        if secret in text
    ]
    assert leaks == []
