"""Admission refuses with the domain's errors (kind and `code`), never with an HTTP status.

The API's statuses for these kinds are checked end to end in tests/integration/commands.
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import pytest

from fieldhub.clock import US_PER_S, ManualClock
from fieldhub.commands.admission import Admission, CommandLimits, NewCommand
from fieldhub.errors import Conflict, Invalid, Overloaded, TooLarge
from fieldhub.protocol.command_states import CommandState
from fieldhub.store import DeviceRow, Store
from fieldhub.store.types import CommandRow, CommandTransition


class FakeStore:
    """The two calls admission makes, over a dict."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], CommandRow] = {}

    async def get_command(self, device_id: str, command_id: str) -> CommandRow | None:
        return self.rows.get((device_id, command_id))

    async def insert_command(self, row: CommandRow, detail: str) -> CommandRow | None:
        key = (row.device_id, row.command_id)
        if key in self.rows:
            return None
        stored = replace(row, history=(CommandTransition(row.state, row.created_us, detail),))
        self.rows[key] = stored
        return stored


def device(command_format: str | None = "native", profile: str = "native") -> DeviceRow:
    return DeviceRow(
        device_id="n1",
        profile=profile,
        first_seen_us=0,
        last_seen_us=0,
        presence="online",
        presence_changed_us=None,
        attributes={},
        stale_after_s=60,
        command_format=command_format,
    )


def admission(
    *, queued: int = 0, limits: CommandLimits | None = None
) -> tuple[Admission, FakeStore, ManualClock]:
    store = FakeStore()
    clock = ManualClock()
    made = Admission(
        store=cast(Store, store),
        clock=clock,
        limits=limits or CommandLimits(),
        queued=lambda _device_id: queued,
    )
    return made, store, clock


async def test_a_device_without_a_format_is_invalid() -> None:
    """A data-only stack has no down-link: Invalid, code commands_unsupported."""
    admit, store, _ = admission()
    with pytest.raises(Invalid) as refused:
        await admit.admit(device(command_format=None, profile="readings"), NewCommand("ping", {}))
    assert refused.value.code == "commands_unsupported"
    assert store.rows == {}


@pytest.mark.parametrize(
    ("fmt", "name", "params", "code"),
    [
        ("fastapi", "reboot", {}, "unknown_command"),
        ("native", "set_window", {"position": 140}, "invalid_params"),
        ("native", "blob", {"x": 2**80}, "invalid_params"),
    ],
)
async def test_what_the_format_refuses_is_invalid_with_its_code(
    fmt: str, name: str, params: dict[str, object], code: str
) -> None:
    """Unknown names, bad params and params JSON cannot carry: Invalid with the format's code."""
    admit, store, _ = admission()
    with pytest.raises(Invalid) as refused:
        await admit.admit(device(fmt), NewCommand(name, params))
    assert refused.value.code == code
    assert store.rows == {}


async def test_over_the_format_s_size_limit_is_too_large() -> None:
    """An encoded command over the firmware's limit: TooLarge, code payload_too_large."""
    admit, store, _ = admission()
    with pytest.raises(TooLarge) as refused:
        await admit.admit(device(), NewCommand("blob", {"x": "a" * 3000}))
    assert refused.value.code == "payload_too_large"
    assert store.rows == {}


async def test_an_expiry_in_the_past_is_invalid_parameter() -> None:
    """expires_at at or before now: Invalid, code invalid_parameter."""
    admit, _, clock = admission()
    with pytest.raises(Invalid) as refused:
        await admit.admit(device(), NewCommand("ping", {}, expires_us=clock.now_us()))
    assert refused.value.code == "invalid_parameter"


async def test_a_full_queue_is_overloaded() -> None:
    """queue_max commands not yet final: Overloaded, code queue_full, retry after 1 s."""
    admit, store, _ = admission(queued=3, limits=CommandLimits(queue_max=3))
    with pytest.raises(Overloaded) as refused:
        await admit.admit(device(), NewCommand("ping", {}))
    assert (refused.value.code, refused.value.retry_after_s) == ("queue_full", 1)
    assert store.rows == {}


async def test_the_rate_limit_is_overloaded_until_a_token_is_free() -> None:
    """Past the burst: Overloaded, code rate_limited, with Retry-After; a token later, accepted."""
    admit, store, clock = admission(limits=CommandLimits(rate_per_s=0.5, burst=2))
    for _ in range(2):
        assert (await admit.admit(device(), NewCommand("ping", {}))).created
    with pytest.raises(Overloaded) as refused:
        await admit.admit(device(), NewCommand("ping", {}))
    assert (refused.value.code, refused.value.retry_after_s) == ("rate_limited", 2)
    clock.advance(2)
    assert (await admit.admit(device(), NewCommand("ping", {}))).created
    assert len(store.rows) == 3


async def test_an_accepted_command_is_stored_pending_with_its_defaults() -> None:
    """Accepted: stored pending on the format's topic, expiring after the default expiry."""
    admit, store, clock = admission()
    admitted = await admit.admit(device(), NewCommand("set_window", {"position": 40}))
    row = admitted.row
    assert admitted.created
    assert admitted.fmt.name == "native"
    assert row.state is CommandState.PENDING
    assert row.topic == "devices/n1/commands"
    assert row.expires_us == clock.now_us() + int(CommandLimits().default_expiry_s * US_PER_S)
    assert store.rows[(row.device_id, row.command_id)] == row


async def test_a_repeated_id_replays_and_a_different_body_conflicts() -> None:
    """The same id and body returns the stored command; another body under it is Conflict."""
    admit, store, _ = admission()
    request = NewCommand("set_window", {"position": 40}, command_id="c-1")
    first = await admit.admit(device(), request)
    again = await admit.admit(device(), request)
    assert (again.row, again.created) == (first.row, False)
    with pytest.raises(Conflict) as refused:
        await admit.admit(device(), replace(request, params={"position": 30}))
    assert refused.value.code == "conflict"
    assert len(store.rows) == 1
