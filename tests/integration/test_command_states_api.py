"""`GET /api/v1/command-states` against a real `fieldhub up`: the lifecycle table of
`fieldhub/protocol/command_states.py`, as the dashboard's command panel reads it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fieldhub.broker import MosquittoProcess
from fieldhub.protocol.command_states import FINAL, TRANSITIONS, CommandState
from support.fieldhub_process import FieldhubProcess

PATH = "/api/v1/command-states"


@pytest.fixture(scope="module")
def fh(
    mosquitto: MosquittoProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FieldhubProcess]:
    process = FieldhubProcess(
        data_dir=tmp_path_factory.mktemp("command-states"), mqtt_url=mosquitto.url
    ).start()
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def states(fh: FieldhubProcess) -> list[dict[str, Any]]:
    response = fh.get(PATH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"states"}, body
    listed: list[dict[str, Any]] = body["states"]
    return listed


def test_every_state_once_in_lifecycle_order(states: list[dict[str, Any]]) -> None:
    names = [s["name"] for s in states]
    assert names == [state.value for state in CommandState]
    assert names[:2] == ["pending", "sent"]
    for state in states:
        assert set(state) == {"name", "final", "next"}, state


def test_final_states_and_transitions_are_the_table(states: list[dict[str, Any]]) -> None:
    assert {s["name"] for s in states if s["final"]} == {state.value for state in FINAL}
    listed = {(s["name"], target) for s in states for target in s["next"]}
    assert listed == {(source.value, target.value) for source, target in TRANSITIONS}
    for state in states:
        # A final state goes nowhere; the others go somewhere.
        assert (state["next"] == []) == state["final"], state


def test_the_order_ranks_what_the_dashboard_needs(states: list[dict[str, Any]]) -> None:
    """Each transition leads to a state listed later, and every final state comes after every
    state that is not: the device page ranks states by this order to never show a command going
    back to an earlier state."""
    position = {s["name"]: i for i, s in enumerate(states)}
    for state in states:
        for target in state["next"]:
            assert position[target] > position[state["name"]], (state["name"], target)
        assert state["next"] == sorted(state["next"], key=position.__getitem__), state
    finals = [position[s["name"]] for s in states if s["final"]]
    others = [position[s["name"]] for s in states if not s["final"]]
    assert max(others) < min(finals)


def test_openapi_describes_the_endpoint(fh: FieldhubProcess) -> None:
    spec = fh.get("/openapi.json").json()
    operation = spec["paths"][PATH]["get"]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/CommandStatesPublic"}
    assert {"404", "422"} <= set(operation["responses"])
    state = spec["components"]["schemas"]["CommandStatePublic"]
    assert set(state["required"]) == {"name", "final", "next"}


def test_other_methods_are_refused(fh: FieldhubProcess) -> None:
    response = httpx.post(f"{fh.base_url}{PATH}", timeout=10.0)
    assert response.status_code == 405
    assert response.json()["error"]["code"]
