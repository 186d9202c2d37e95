"""The window loop's API with authentication on: each route's role, the audit entries of what
changes the loop, and a model version that fails validation refused (the one serving stays)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support.auth import create_token
from support.fieldhub_process import FieldhubProcess

DEVICE = "esp32_roles1"


@pytest.fixture(scope="module")
def fh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldhubProcess]:
    process = FieldhubProcess(data_dir=tmp_path_factory.mktemp("ml-roles"), auth=True).start()
    try:
        yield process
    finally:
        assert process.stop() == 0


@pytest.fixture(scope="module")
def clients(fh: FieldhubProcess) -> Iterator[dict[str, httpx.Client]]:
    tokens = {
        role: str(create_token(fh.base_url, fh.admin_token, role=role)["token"])
        for role in ("viewer", "operator")
    }
    tokens["admin"] = fh.admin_token
    made = {
        role: httpx.Client(
            base_url=fh.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        for role, token in tokens.items()
    }
    made["nobody"] = httpx.Client(base_url=fh.base_url, timeout=30)
    yield made
    for client in made.values():
        client.close()


READS = [
    "/api/v1/ml/decisions",
    "/api/v1/ml/stats",
    "/api/v1/ml/models",
    f"/api/v1/ml/devices/{DEVICE}",
]


@pytest.mark.parametrize("path", READS)
def test_viewers_read_and_nobody_else_does(clients: dict[str, httpx.Client], path: str) -> None:
    assert clients["nobody"].get(path).status_code == 401
    for role in ("viewer", "operator", "admin"):
        answer = clients[role].get(path)
        assert answer.status_code == 200, (role, answer.text)


def test_only_admins_configure_a_device_and_it_is_audited(
    clients: dict[str, httpx.Client],
) -> None:
    body: dict[str, Any] = {"guards": {"shadow": True, "max_step": 20}}
    path = f"/api/v1/ml/devices/{DEVICE}"
    assert clients["nobody"].put(path, json=body).status_code == 401
    for role in ("viewer", "operator"):
        assert clients[role].put(path, json=body).status_code == 403, role
    answer = clients["admin"].put(path, json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["config"]["guards"]["max_step"] == 20
    assert answer.json()["configured"] is True
    bad = clients["admin"].put(path, json={"guards": {"min_position": 80, "max_position": 20}})
    assert bad.status_code == 422
    unknown = clients["admin"].put(path, json={"guards": {"max_speed": 3}})
    assert unknown.status_code == 422
    audit = clients["admin"].get("/api/v1/audit", params={"action": "ml.configure"}).json()
    [entry] = audit["data"]
    assert entry["target"] == f"device:{DEVICE}"


def test_operators_ask_for_a_decision_viewers_may_not(clients: dict[str, httpx.Client]) -> None:
    path = f"/api/v1/ml/devices/{DEVICE}/decide"
    assert clients["viewer"].post(path).status_code == 403
    answer = clients["operator"].post(path)
    assert answer.status_code == 200, answer.text
    decision = answer.json()
    # No readings of this device: the inputs are missing, the default fallback holds.
    assert decision["outcome"] == "fallback"
    assert decision["command_id"] is None
    listed = clients["viewer"].get("/api/v1/ml/decisions", params={"device": DEVICE}).json()
    assert [d["id"] for d in listed["data"]] == [decision["id"]]
    one = clients["viewer"].get(f"/api/v1/ml/decisions/{decision['id']}")
    assert one.json()["verdicts"] == decision["verdicts"]
    assert clients["viewer"].get("/api/v1/ml/decisions/nope").status_code == 404


def test_only_admins_activate_and_roll_back_a_model(clients: dict[str, httpx.Client]) -> None:
    models = clients["viewer"].get("/api/v1/ml/models").json()
    assert models["name"] == "window"
    assert models["active"] == models["serving"] == 1
    assert models["versions"][0]["manifest"]["metrics"]["mae"] > 0
    for role in ("viewer", "operator"):
        assert clients[role].post("/api/v1/ml/models/1/activate").status_code == 403
        assert clients[role].post("/api/v1/ml/models/rollback").status_code == 403
    missing = clients["admin"].post("/api/v1/ml/models/7/activate")
    assert missing.status_code == 404, missing.text
    # Nothing was active before version 1: no rollback, and version 1 keeps serving.
    refused = clients["admin"].post("/api/v1/ml/models/rollback")
    assert refused.status_code == 409, refused.text
    again = clients["admin"].post("/api/v1/ml/models/1/activate")
    assert again.status_code == 200, again.text
    assert again.json()["serving"] == 1
    audit = clients["admin"].get("/api/v1/audit", params={"action": "ml.activate"}).json()
    assert [e["outcome"] for e in audit["data"]] == ["ok", "failed"]
