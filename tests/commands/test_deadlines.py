"""The deadline scheduler behind command expiry, timeouts and publish-ack timeouts.

Time is a ManualClock moved on by the tests; `run()` is woken with `wake()` instead of waiting.
"""

from __future__ import annotations

import asyncio

from fieldhub.clock import US_PER_S, ManualClock
from fieldhub.commands.deadlines import Deadlines, Due

# A safety net for the async tests: how long a test waits for a deadline it made due before
# failing (it never waits this long when the scheduler works; no test sleeps).
FIRE_WAIT_S = 5.0


def make() -> tuple[ManualClock, Deadlines[str, str]]:
    clock = ManualClock()
    return clock, Deadlines(clock=clock)


def after(clock: ManualClock, seconds: float) -> int:
    return clock.now_us() + round(seconds * US_PER_S)


async def next_turn() -> None:
    """One turn of the event loop: tasks ready to run do, and no time passes."""
    loop = asyncio.get_running_loop()
    turned: asyncio.Future[None] = loop.create_future()
    loop.call_soon(turned.set_result, None)
    await turned


def test_an_empty_scheduler_has_nothing_due() -> None:
    """No deadlines: no next one, nothing due, length 0."""
    _, deadlines = make()
    assert deadlines.next_due_us() is None
    assert deadlines.pop_due() == []
    assert len(deadlines) == 0


def test_next_due_is_the_earliest_deadline() -> None:
    """next_due_us is the earliest of all keys' deadlines, whatever the order they were set in."""
    clock, deadlines = make()
    deadlines.schedule("a", "timeout", after(clock, 30))
    deadlines.schedule("b", "expire", after(clock, 10))
    deadlines.schedule("c", "timeout", after(clock, 20))
    assert deadlines.next_due_us() == after(clock, 10)
    assert len(deadlines) == 3


def test_nothing_is_due_before_its_time() -> None:
    """A deadline stays put until the clock reaches it, and is due exactly at its time."""
    clock, deadlines = make()
    at = after(clock, 10)
    deadlines.schedule("a", "timeout", at)
    clock.advance(9.999999)
    assert deadlines.pop_due() == []
    clock.advance(0.000001)
    assert deadlines.pop_due() == [Due("a", "timeout", at)]
    assert len(deadlines) == 0


def test_due_deadlines_come_earliest_first_and_later_ones_stay() -> None:
    """pop_due returns every due deadline in time order and leaves the rest scheduled."""
    clock, deadlines = make()
    deadlines.schedule("late", "timeout", after(clock, 60))
    deadlines.schedule("second", "timeout", after(clock, 5))
    deadlines.schedule("first", "expire", after(clock, 1))
    clock.advance(10)
    assert [d.key for d in deadlines.pop_due()] == ["first", "second"]
    assert deadlines.next_due_us() == after(clock, 50)
    assert len(deadlines) == 1


def test_equal_times_come_in_scheduling_order() -> None:
    """Deadlines set for the same microsecond come out in the order they were scheduled."""
    clock, deadlines = make()
    at = after(clock, 1)
    for key in ["c", "a", "b"]:
        deadlines.schedule(key, "expire", at)
    clock.advance(1)
    assert [d.key for d in deadlines.pop_due()] == ["c", "a", "b"]


def test_a_deadline_already_past_is_due_at_once() -> None:
    """A deadline set in the past (an expiry found passed) is due without the clock moving."""
    clock, deadlines = make()
    deadlines.schedule("a", "expire", after(clock, -5))
    assert deadlines.pop_due() == [Due("a", "expire", after(clock, -5))]


def test_scheduling_a_kind_again_moves_it_earlier() -> None:
    """A key's kind has one deadline: setting it earlier fires it then, and only once."""
    clock, deadlines = make()
    deadlines.schedule("a", "publish", after(clock, 10))
    deadlines.schedule("a", "publish", after(clock, 5))
    assert len(deadlines) == 1
    assert deadlines.due_at_us("a", "publish") == after(clock, 5)
    clock.advance(5)
    assert deadlines.pop_due() == [Due("a", "publish", clock.now_us())]
    clock.advance(10)
    assert deadlines.pop_due() == []


def test_scheduling_a_kind_again_moves_it_later() -> None:
    """Setting a key's kind later means the earlier time no longer fires (a re-sent publish)."""
    clock, deadlines = make()
    deadlines.schedule("a", "publish", after(clock, 5))
    deadlines.schedule("a", "publish", after(clock, 20))
    clock.advance(5)
    assert deadlines.pop_due() == []
    assert deadlines.next_due_us() == after(clock, 15)
    clock.advance(15)
    assert [d.at_us for d in deadlines.pop_due()] == [clock.now_us()]


def test_kinds_of_one_key_are_separate_deadlines() -> None:
    """One key may hold a deadline of each kind; each fires at its own time."""
    clock, deadlines = make()
    deadlines.schedule("a", "expire", after(clock, 60))
    deadlines.schedule("a", "timeout", after(clock, 10))
    assert len(deadlines) == 2
    clock.advance(10)
    assert deadlines.pop_due() == [Due("a", "timeout", clock.now_us())]
    clock.advance(50)
    assert deadlines.pop_due() == [Due("a", "expire", clock.now_us())]


def test_cancelling_one_kind_keeps_the_key_s_other_kinds() -> None:
    """cancel(key, kind) drops that deadline only and says it dropped one."""
    clock, deadlines = make()
    deadlines.schedule("a", "expire", after(clock, 5))
    deadlines.schedule("a", "publish", after(clock, 5))
    assert deadlines.cancel("a", "expire") == 1
    assert deadlines.cancel("a", "expire") == 0
    assert deadlines.due_at_us("a", "expire") is None
    clock.advance(5)
    assert deadlines.pop_due() == [Due("a", "publish", clock.now_us())]


def test_cancelling_a_key_drops_all_its_kinds() -> None:
    """cancel(key) drops every deadline of the key (a command that ended) and no other key's."""
    clock, deadlines = make()
    deadlines.schedule("a", "expire", after(clock, 5))
    deadlines.schedule("a", "timeout", after(clock, 6))
    deadlines.schedule("b", "timeout", after(clock, 7))
    assert deadlines.cancel("a") == 2
    assert deadlines.cancel("a") == 0
    assert deadlines.cancel("nobody") == 0
    assert len(deadlines) == 1
    assert deadlines.next_due_us() == after(clock, 7)
    clock.advance(10)
    assert [d.key for d in deadlines.pop_due()] == ["b"]


def test_a_deadline_cancelled_then_scheduled_again_fires_once() -> None:
    """Scheduling after a cancel counts: the new time fires, the cancelled one does not."""
    clock, deadlines = make()
    deadlines.schedule("a", "timeout", after(clock, 5))
    deadlines.cancel("a")
    deadlines.schedule("a", "timeout", after(clock, 8))
    clock.advance(10)
    assert deadlines.pop_due() == [Due("a", "timeout", after(clock, -2))]


def test_many_reschedules_leave_one_deadline() -> None:
    """Moving one deadline thousands of times (superseded entries swept) leaves exactly one."""
    clock, deadlines = make()
    for i in range(10_000):
        deadlines.schedule("a", "publish", after(clock, 100 + i))
        deadlines.schedule(f"gone-{i}", "expire", after(clock, 1))
        deadlines.cancel(f"gone-{i}")
    assert len(deadlines) == 1
    clock.advance(100 + 10_000)
    assert deadlines.pop_due() == [Due("a", "publish", after(clock, -1))]
    assert deadlines.next_due_us() is None


async def test_run_fires_a_deadline_when_the_clock_reaches_it() -> None:
    """run() calls back once the clock passed a deadline and it is woken, not before."""
    clock, deadlines = make()
    fired: list[Due[str, str]] = []
    came = asyncio.Event()

    def fire(due: Due[str, str]) -> None:
        fired.append(due)
        came.set()

    task = asyncio.create_task(deadlines.run(fire), name="test.deadlines")
    try:
        deadlines.schedule("a", "timeout", after(clock, 5))
        await next_turn()
        deadlines.wake()
        await next_turn()
        assert fired == []
        clock.advance(5)
        deadlines.wake()
        await asyncio.wait_for(came.wait(), FIRE_WAIT_S)
        assert fired == [Due("a", "timeout", clock.now_us())]
    finally:
        task.cancel()
        await asyncio.wait([task])


async def test_run_fires_a_deadline_scheduled_by_another_deadline() -> None:
    """A callback may schedule a deadline due at once (an expiry found passed); it fires too."""
    clock, deadlines = make()
    fired: list[str] = []
    done = asyncio.Event()

    def fire(due: Due[str, str]) -> None:
        fired.append(due.kind)
        if due.kind == "publish":
            deadlines.schedule(due.key, "expire", clock.now_us())
        else:
            done.set()

    deadlines.schedule("a", "publish", clock.now_us())
    task = asyncio.create_task(deadlines.run(fire), name="test.deadlines")
    try:
        await asyncio.wait_for(done.wait(), FIRE_WAIT_S)
        assert fired == ["publish", "expire"]
    finally:
        task.cancel()
        await asyncio.wait([task])


async def test_a_failing_callback_does_not_stop_later_deadlines() -> None:
    """A callback that raises is logged; the deadlines after it still fire."""
    clock, deadlines = make()
    fired: list[str] = []
    done = asyncio.Event()

    def fire(due: Due[str, str]) -> None:
        fired.append(due.key)
        if due.key == "bad":
            raise RuntimeError("callback failed")
        done.set()

    deadlines.schedule("bad", "timeout", clock.now_us())
    deadlines.schedule("good", "timeout", after(clock, 1))
    task = asyncio.create_task(deadlines.run(fire), name="test.deadlines")
    try:
        await next_turn()
        clock.advance(1)
        deadlines.wake()
        await asyncio.wait_for(done.wait(), FIRE_WAIT_S)
        assert fired == ["bad", "good"]
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.wait([task])


async def test_run_never_fires_a_cancelled_deadline() -> None:
    """A deadline cancelled before its time (the command ended) is never called back."""
    clock, deadlines = make()
    fired: list[str] = []
    done = asyncio.Event()

    def fire(due: Due[str, str]) -> None:
        fired.append(due.key)
        done.set()

    deadlines.schedule("ended", "timeout", after(clock, 5))
    deadlines.schedule("open", "timeout", after(clock, 6))
    task = asyncio.create_task(deadlines.run(fire), name="test.deadlines")
    try:
        await next_turn()
        deadlines.cancel("ended")
        clock.advance(6)
        deadlines.wake()
        await asyncio.wait_for(done.wait(), FIRE_WAIT_S)
        assert fired == ["open"]
    finally:
        task.cancel()
        await asyncio.wait([task])
