"""Commands in the store: inserts, the transition table enforced by conditional writes, acks
applied inside an ingest batch, listing and the commands loaded at start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from fieldhub.protocol.command_states import FINAL, TRANSITIONS, CommandState, allowed, sources
from fieldhub.protocol.messages import CommandReply
from fieldhub.store import Store, WriteBatch
from fieldhub.store.types import CommandOutcome, CommandRow
from support.store_rows import T0, S, msg

Reopen = Callable[[Store], Awaitable[Store]]
P = CommandState.PENDING
SENT = CommandState.SENT


def command(command_id: str = "c-1", *, created_us: int = T0, device: str = "dev-1") -> CommandRow:
    return CommandRow(
        device_id=device,
        command_id=command_id,
        name="set_window",
        params={"position": 40},
        format="native",
        topic=f"devices/{device}/commands",
        state=P,
        created_us=created_us,
        updated_us=created_us,
        timeout_s=10.0,
        expires_us=created_us + 3600 * S,
    )


def reply(command_id: str, *, ok: bool = True, at_us: int = T0 + S) -> CommandReply:
    return CommandReply(
        device_id="dev-1",
        profile="native",
        command_id=command_id,
        ok=ok,
        result={"position": 40} if ok else None,
        error=None if ok else "jammed",
        received_us=at_us,
    )


async def with_device(store: Store, device: str = "dev-1") -> None:
    await store.write_batch(WriteBatch(decoded=[msg(device, T0 - S)]))


def test_transition_table_has_one_start_and_these_finals() -> None:
    """The table: pending starts, five states end, and nothing leaves a final state."""
    assert {CommandState(s) for s in FINAL} == {
        CommandState.SUCCEEDED,
        CommandState.FAILED,
        CommandState.TIMED_OUT,
        CommandState.EXPIRED,
        CommandState.CANCELLED,
    }
    assert not any(source in FINAL for source, _ in TRANSITIONS)
    assert sources(CommandState.SUCCEEDED) == (SENT,)
    assert sources(CommandState.CANCELLED) == (P,)
    assert not allowed(SENT, CommandState.CANCELLED)
    assert not allowed(P, CommandState.TIMED_OUT)


async def test_insert_then_get_with_history(store: Store) -> None:
    await with_device(store)
    stored = await store.insert_command(command(), "accepted")
    assert stored is not None
    assert stored.state is P
    assert [h.state for h in stored.history] == [P]
    got = await store.get_command("dev-1", "c-1")
    assert got is not None
    assert (got.name, got.params, got.format, got.state) == (
        "set_window",
        {"position": 40},
        "native",
        P,
    )
    assert [(h.state, h.at_us, h.detail) for h in got.history] == [(P, T0, "accepted")]


async def test_same_id_on_one_device_is_refused_not_overwritten(store: Store) -> None:
    await with_device(store)
    await with_device(store, "dev-2")
    assert await store.insert_command(command(), "first") is not None
    assert await store.insert_command(replace(command(), params={"position": 1}), "again") is None
    got = await store.get_command("dev-1", "c-1")
    assert got is not None
    assert got.params == {"position": 40}
    # Ids are per device: another device may use the same one.
    assert await store.insert_command(command(device="dev-2"), "other device") is not None


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ([SENT, CommandState.SUCCEEDED], [CommandState.TIMED_OUT, P, CommandState.CANCELLED]),
        ([SENT, CommandState.TIMED_OUT], [CommandState.SUCCEEDED, CommandState.FAILED]),
        ([CommandState.CANCELLED], [SENT, CommandState.EXPIRED]),
        ([CommandState.EXPIRED], [SENT, CommandState.CANCELLED]),
    ],
)
async def test_only_the_table_s_transitions_are_stored(
    store: Store, path: list[CommandState], refused: list[CommandState]
) -> None:
    """Each allowed step is stored with its time; a step the table lacks changes nothing."""
    await with_device(store)
    await store.insert_command(command(), "accepted")
    for i, state in enumerate(path, start=1):
        row = await store.transition_command(
            "dev-1", "c-1", state, T0 + i * S, CommandOutcome(f"to {state}", "test")
        )
        assert row is not None
        assert row.state is state
        assert [h.state for h in row.history] == [state]
    for state in refused:
        assert (
            await store.transition_command("dev-1", "c-1", state, T0 + 9 * S, CommandOutcome("x"))
            is None
        )
    got = await store.get_command("dev-1", "c-1")
    assert got is not None
    assert [h.state for h in got.history] == [P, *path]
    assert got.state is path[-1]
    assert got.finished_us == T0 + len(path) * S
    assert got.decided_by == "test"


async def test_ack_in_a_batch_ends_the_command_in_the_same_transaction(store: Store) -> None:
    await with_device(store)
    await store.insert_command(command(), "accepted")
    await store.transition_command("dev-1", "c-1", SENT, T0 + S // 2, CommandOutcome("puback"))
    result = await store.write_batch(WriteBatch(command_replies=[reply("c-1")]))
    assert [
        (r.command_id, r.state, r.decided_by, r.result) for r in result.command_transitions
    ] == [("c-1", CommandState.SUCCEEDED, "ack", {"position": 40})]
    assert result.late_replies == 0
    # The same ack again (a device re-sending it for a repeated id) changes nothing.
    again = await store.write_batch(WriteBatch(command_replies=[reply("c-1", at_us=T0 + 2 * S)]))
    assert again.command_transitions == []
    assert again.late_replies == 1
    got = await store.get_command("dev-1", "c-1")
    assert got is not None
    assert [h.state for h in got.history] == [P, SENT, CommandState.SUCCEEDED]
    assert got.finished_us == T0 + S


async def test_ack_before_the_puback_was_recorded_implies_sent(store: Store) -> None:
    """The device can answer before our own `sent` write lands: `sent` is recorded first, at the
    ack's time, and the later `sent` write is refused."""
    await with_device(store)
    await store.insert_command(command(), "accepted")
    result = await store.write_batch(WriteBatch(command_replies=[reply("c-1", ok=False)]))
    (row,) = result.command_transitions
    assert row.state is CommandState.FAILED
    assert row.error == "jammed"
    assert [h.state for h in row.history] == [SENT, CommandState.FAILED]
    assert (
        await store.transition_command("dev-1", "c-1", SENT, T0 + 2 * S, CommandOutcome("late"))
        is None
    )
    got = await store.get_command("dev-1", "c-1")
    assert got is not None
    assert [h.state for h in got.history] == [P, SENT, CommandState.FAILED]
    assert got.sent_us == T0 + S


async def test_history_times_never_go_backwards(store: Store) -> None:
    """A transition timed before the last one (clocks of two threads) is stored at the last
    one's time, so a history always reads in order."""
    await with_device(store)
    await store.insert_command(command(), "accepted")
    await store.transition_command("dev-1", "c-1", SENT, T0 + 5 * S, CommandOutcome("puback"))
    await store.write_batch(WriteBatch(command_replies=[reply("c-1", at_us=T0 + 4 * S)]))
    got = await store.get_command("dev-1", "c-1")
    assert got is not None
    times = [h.at_us for h in got.history]
    assert times == sorted(times)


async def test_replies_for_unknown_commands_or_devices_are_counted_late(store: Store) -> None:
    await with_device(store)
    batch = WriteBatch(
        command_replies=[reply("nope"), replace(reply("c-1"), device_id="never-seen")]
    )
    result = await store.write_batch(batch)
    assert result.command_transitions == []
    assert result.late_replies == 2


async def test_list_newest_first_with_cursor_and_state_filter(store: Store) -> None:
    await with_device(store)
    for i in range(5):
        await store.insert_command(command(f"c-{i}", created_us=T0 + i * S), "accepted")
    await store.transition_command(
        "dev-1", "c-3", CommandState.CANCELLED, T0 + 9 * S, CommandOutcome("x")
    )
    first = await store.list_commands("dev-1", state=None, limit=2, before=None)
    assert [r.command_id for r in first] == ["c-4", "c-3"]
    rest = await store.list_commands(
        "dev-1", state=None, limit=10, before=(first[-1].created_us, first[-1].command_id)
    )
    assert [r.command_id for r in rest] == ["c-2", "c-1", "c-0"]
    cancelled = await store.list_commands(
        "dev-1", state=CommandState.CANCELLED, limit=10, before=None
    )
    assert [r.command_id for r in cancelled] == ["c-3"]
    assert await store.list_commands("other", state=None, limit=10, before=None) == []


async def test_active_commands_survive_a_reopen(store: Store, reopen: Reopen) -> None:
    """What is not final is loaded at start, oldest first; final ones are not."""
    await with_device(store)
    for i in range(3):
        await store.insert_command(command(f"c-{i}", created_us=T0 + i * S), "accepted")
    await store.transition_command("dev-1", "c-1", SENT, T0 + 5 * S, CommandOutcome("puback"))
    await store.transition_command(
        "dev-1", "c-2", CommandState.EXPIRED, T0 + 6 * S, CommandOutcome("x")
    )
    store = await reopen(store)
    active = await store.active_commands()
    assert [(r.command_id, r.state) for r in active] == [("c-0", P), ("c-1", SENT)]
    assert active[1].sent_us == T0 + 5 * S


async def test_a_device_s_command_format_follows_its_messages(store: Store) -> None:
    """A message from a route that names a format records it, with the id as spelled."""
    spoken = replace(msg("AA:BB", T0), command_format="fastapi", topic_id="AABB")
    await store.write_batch(WriteBatch(decoded=[spoken]))
    device = await store.get_device("AA:BB", now_us=T0)
    assert device is not None
    assert (device.command_format, device.topic_id) == ("fastapi", "AABB")
    await store.write_batch(WriteBatch(decoded=[msg("AA:BB", T0 + S)]))  # says nothing: kept
    device = await store.get_device("AA:BB", now_us=T0 + S)
    assert device is not None
    assert device.command_format == "fastapi"
