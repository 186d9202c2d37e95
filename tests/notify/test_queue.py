"""The dispatcher against real receivers: lanes, drops, retries counted, digests."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Literal

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from fieldhub.clock import US_PER_S
from fieldhub.notify.email import EmailSender, SmtpSettings
from fieldhub.notify.message import Attempt, Notification
from fieldhub.notify.queue import Dispatcher
from fieldhub.notify.webhook import WebhookSender, verify_signature
from notify.conftest import DeliveryLog, FakeTime, HookServer, InstantTime, Mailbox, Reply

SECRET_ENV = "FIELDHUB_TEST_HOOK_SECRET"

MakeDispatcher = Callable[..., Dispatcher]


def note(url: str, key: str, *, group: str | None = None, device: str = "dev-1") -> Notification:
    return Notification(
        kind="webhook",
        target=url,
        subject=f"Cold room above 8 °C: {device}",
        payload={"rule": "cold-room-high", "device": device, "value": 8.4},
        key=key,
        created_us=1_700_000_000 * US_PER_S,
        group=group,
        secret_env=SECRET_ENV,
    )


def count(registry: CollectorRegistry, name: str, kind: str = "webhook") -> float:
    return registry.get_sample_value(f"fieldhub_notify_{name}_total", {"kind": kind}) or 0.0


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest_asyncio.fixture(loop_scope="function")
async def make_dispatcher(
    registry: CollectorRegistry, hook_secret: str, delivery_log: DeliveryLog
) -> AsyncIterator[MakeDispatcher]:
    """Dispatchers with a webhook sender (the test's secret) on the test's registry."""
    made: list[tuple[Dispatcher, WebhookSender]] = []

    def make(**kw: object) -> Dispatcher:
        clock = kw.get("clock")
        sender = WebhookSender(
            secrets={SECRET_ENV: hook_secret}.get,
            **({"clock": clock} if clock is not None else {}),  # type: ignore[arg-type]
        )
        senders = kw.pop("senders", {"webhook": sender})
        dispatcher = Dispatcher(
            senders,  # type: ignore[arg-type]
            registry=registry,
            on_delivery=delivery_log,
            **kw,  # type: ignore[arg-type]
        )
        made.append((dispatcher, sender))
        return dispatcher

    yield make
    for dispatcher, sender in made:
        await dispatcher.close()
        await sender.aclose()


async def test_a_slow_target_does_not_delay_a_fast_one(
    make_hook_server: type[HookServer],
    make_dispatcher: MakeDispatcher,
    delivery_log: DeliveryLog,
    registry: CollectorRegistry,
) -> None:
    slow, fast = make_hook_server(), make_hook_server()
    release = threading.Event()
    slow.script = [Reply(200, hold=release) for _ in range(10)]
    # A small pool: the slow host may hold its lane's 2 slots, never the other 2.
    dispatcher = make_dispatcher(workers=4, per_target=2)
    try:
        for i in range(10):
            assert dispatcher.submit(note(slow.url(), f"slow-{i}"))
        assert dispatcher.submit(note(fast.url(), "fast-1"))

        await delivery_log.wait_for("fast-1", "delivered")
        assert not any(d.outcome == "delivered" for d in delivery_log.records if d.key != "fast-1")
        await slow.wait_requests(2)
        assert not any(d.outcome == "delivered" for d in delivery_log.records if d.key != "fast-1")
        assert len(slow.requests) == 2  # its lane's concurrency limit
        assert dispatcher.pending("webhook") == 10
        assert any(
            name.startswith("notify.lane[webhook http://127.0.0.1:")
            for name in dispatcher.task_names()
        )
    finally:
        release.set()
    async with asyncio.timeout(10):
        await dispatcher.wait_idle()
    assert count(registry, "delivered") == 11
    assert count(registry, "queued") == 11
    assert dispatcher.pending("webhook") == 0


async def test_a_full_queue_drops_and_counts(
    make_hook_server: type[HookServer],
    make_dispatcher: MakeDispatcher,
    delivery_log: DeliveryLog,
    registry: CollectorRegistry,
) -> None:
    server = make_hook_server()
    release = threading.Event()
    server.script = [Reply(200, hold=release) for _ in range(3)]
    dispatcher = make_dispatcher(max_queued=3)
    try:
        accepted = [dispatcher.submit(note(server.url(), f"n-{i}")) for i in range(5)]
        assert accepted == [True, True, True, False, False]
        assert count(registry, "dropped") == 2
        assert [(d.key, d.outcome, d.attempt) for d in delivery_log.records] == [
            ("n-3", "dropped", 0),
            ("n-4", "dropped", 0),
        ]
        assert "queue is full" in (delivery_log.records[0].error or "")
        assert registry.get_sample_value("fieldhub_notify_pending", {"kind": "webhook"}) == 3
    finally:
        release.set()
    async with asyncio.timeout(10):
        await dispatcher.wait_idle()
    assert count(registry, "delivered") == 3
    assert len(server.requests) == 3


async def test_one_target_cannot_fill_the_shared_queue(
    make_hook_server: type[HookServer],
    make_dispatcher: MakeDispatcher,
    registry: CollectorRegistry,
) -> None:
    dead, other = make_hook_server(), make_hook_server()
    release = threading.Event()
    dead.script = [Reply(200, hold=release) for _ in range(4)]
    dispatcher = make_dispatcher(max_queued=100, max_per_target=4, per_target=1)
    try:
        results = [dispatcher.submit(note(dead.url(), f"d-{i}")) for i in range(10)]
        # The runner took the first, its lane holds four more, the rest are dropped.
        await asyncio.sleep(0)
        assert results.count(True) in (4, 5)
        assert dispatcher.submit(note(other.url(), "o-1"))
    finally:
        release.set()
    async with asyncio.timeout(10):
        await dispatcher.wait_idle()
    assert count(registry, "dropped") == 10 - results.count(True)
    assert len(other.requests) == 1


async def test_retries_are_counted(
    hook_server: HookServer,
    make_dispatcher: MakeDispatcher,
    instant_time: InstantTime,
    delivery_log: DeliveryLog,
    registry: CollectorRegistry,
) -> None:
    hook_server.script = [Reply(500), Reply(503), Reply(200), Reply(404)]
    dispatcher = make_dispatcher(clock=instant_time.clock, sleep=instant_time.sleep)
    dispatcher.submit(note(hook_server.url(), "a"))
    async with asyncio.timeout(10):
        await delivery_log.wait_for("a", "delivered")
    dispatcher.submit(note(hook_server.url(), "b"))
    async with asyncio.timeout(10):
        await dispatcher.wait_idle()

    assert [d.outcome for d in delivery_log.of("a")] == ["retrying", "retrying", "delivered"]
    assert [(d.outcome, d.status) for d in delivery_log.of("b")] == [("failed", 404)]
    assert count(registry, "retries") == 2
    assert count(registry, "delivered") == 1
    assert count(registry, "failed") == 1
    assert len(instant_time.slept) == 2


async def test_a_digest_collapses_a_group(
    hook_server: HookServer,
    make_dispatcher: MakeDispatcher,
    fake_time: FakeTime,
    delivery_log: DeliveryLog,
    registry: CollectorRegistry,
    hook_secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    dispatcher = make_dispatcher(clock=fake_time.clock, sleep=fake_time.sleep, digest_window_s=60.0)
    url = hook_server.url()
    for i in range(1000):
        dispatcher.submit(note(url, f"n-{i}", group="cold-room-high", device=f"dev-{i}"))
    # Another rule's notification is its own group: sent at once too.
    dispatcher.submit(note(url, "other-0", group="gateway-no-data"))

    # The first of each group goes at once: a lone alarm is never held for the window.
    await delivery_log.wait_for("n-0", "delivered")
    await delivery_log.wait_for("other-0", "delivered")
    assert len(hook_server.requests) == 2
    assert count(registry, "digested") == 999

    await fake_time.wait_sleeping(2)
    await fake_time.advance(60)
    await delivery_log.wait_delivered(3)
    async with asyncio.timeout(10):
        await dispatcher.wait_idle()

    assert len(hook_server.requests) == 3
    digest = hook_server.requests[2]
    body = json.loads(digest.body)
    assert body["payload"]["digest"] == {
        "group": "cold-room-high",
        "count": 999,
        "window_s": 60.0,
        "omitted": 0,
    }
    devices = [item["payload"]["device"] for item in body["payload"]["items"]]
    assert devices == [f"dev-{i}" for i in range(1, 1000)]
    assert body["subject"].startswith("999 notifications: Cold room above 8 °C: dev-1")
    assert body["key"].startswith("digest-cold-room-high-")
    assert verify_signature(
        hook_secret,
        digest.headers["x-fieldhub-timestamp"],
        digest.body,
        digest.headers["x-fieldhub-signature"],
        tolerance_s=None,
    )

    # A quiet window closes the group: the next notification goes at once again.
    await fake_time.wait_sleeping(1)
    await fake_time.advance(60)
    assert not any(name.startswith("notify.digest") for name in dispatcher.task_names())
    dispatcher.submit(note(url, "later", group="cold-room-high"))
    await delivery_log.wait_for("later", "delivered")
    assert len(hook_server.requests) == 4
    assert hook_secret not in caplog.text


async def test_a_storm_sends_one_digest_per_window(
    hook_server: HookServer,
    make_dispatcher: MakeDispatcher,
    fake_time: FakeTime,
    delivery_log: DeliveryLog,
) -> None:
    dispatcher = make_dispatcher(clock=fake_time.clock, sleep=fake_time.sleep)
    url = hook_server.url()
    dispatcher.submit(note(url, "w0", group="g"))
    await delivery_log.wait_for("w0", "delivered")
    for window in range(1, 4):
        for i in range(50):
            dispatcher.submit(note(url, f"w{window}-{i}", group="g", device=f"dev-{i}"))
        await fake_time.wait_sleeping(1)
        await fake_time.advance(60)
        await delivery_log.wait_delivered(1 + window)
    counts = [
        json.loads(r.body)["payload"].get("digest", {}).get("count") for r in hook_server.requests
    ]
    assert counts == [None, 50, 50, 50]


async def test_email_digest_through_a_real_smtp_server(
    smtp_server: tuple[Mailbox, int],
    make_dispatcher: MakeDispatcher,
    fake_time: FakeTime,
    delivery_log: DeliveryLog,
) -> None:
    mailbox, port = smtp_server
    sender = EmailSender(
        SmtpSettings(host="127.0.0.1", port=port, from_addr="fieldhub@example.com")
    )
    dispatcher = make_dispatcher(
        senders={"email": sender}, clock=fake_time.clock, sleep=fake_time.sleep
    )
    for i in range(200):
        dispatcher.submit(
            Notification(
                kind="email",
                target="ops@example.com",
                subject=f"No data from gateway-{i}",
                payload={"rule": "gateway-no-data", "device": f"gateway-{i}"},
                key=f"e-{i}",
                created_us=1_700_000_000 * US_PER_S,
                group="gateway-no-data",
            )
        )
    await delivery_log.wait_for("e-0", "delivered")
    await fake_time.wait_sleeping(1)
    await fake_time.advance(60)
    await delivery_log.wait_delivered(2)
    async with asyncio.timeout(10):
        await dispatcher.wait_idle()

    assert len(mailbox.envelopes) == 2
    text = mailbox.envelopes[1].content
    assert isinstance(text, bytes)
    body = text.decode()
    assert "Subject: 199 notifications: No data from gateway-1 and others" in body
    assert "199 notifications of gateway-no-data within 60.0 s" in body
    assert "- No data from gateway-199" in body
    assert "device: gateway-42" in body


async def test_close_drops_what_is_still_queued(
    hook_server: HookServer,
    make_dispatcher: MakeDispatcher,
    delivery_log: DeliveryLog,
    registry: CollectorRegistry,
) -> None:
    release = threading.Event()
    hook_server.script = [Reply(200, hold=release)]
    dispatcher = make_dispatcher(per_target=1)
    for i in range(3):
        dispatcher.submit(note(hook_server.url(), f"n-{i}"))
    await hook_server.wait_requests(1)
    await dispatcher.close()
    release.set()

    assert count(registry, "dropped") == 3
    assert {d.key for d in delivery_log.records if d.outcome == "dropped"} == {"n-0", "n-1", "n-2"}
    assert not dispatcher.submit(note(hook_server.url(), "late"))
    assert dispatcher.pending("webhook") == 0


class Raising:
    """A sender with a bug: it raises instead of classifying."""

    @property
    def kind(self) -> Literal["webhook"]:
        return "webhook"

    async def attempt(self, notification: Notification) -> Attempt:
        raise RuntimeError("bug")


async def test_a_sender_that_raises_costs_one_notification(
    make_dispatcher: MakeDispatcher, delivery_log: DeliveryLog, registry: CollectorRegistry
) -> None:
    dispatcher = make_dispatcher(senders={"webhook": Raising()})
    dispatcher.submit(note("http://127.0.0.1:9/hook", "a"))
    dispatcher.submit(note("http://127.0.0.1:9/hook", "b"))
    async with asyncio.timeout(10):
        await dispatcher.wait_idle()
    assert [(d.key, d.outcome) for d in delivery_log.records] == [("a", "failed"), ("b", "failed")]
    assert delivery_log.records[0].error == "sender error: RuntimeError"
    assert count(registry, "failed") == 2
