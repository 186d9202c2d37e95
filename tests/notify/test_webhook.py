"""Webhooks against a real HTTP server: signed, retried on 5xx/429/refusal, never on a 400."""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from fieldhub.clock import US_PER_S
from fieldhub.notify.message import Notification, redact_url
from fieldhub.notify.retry import DEFAULT_POLICY, RetryPolicy, deliver
from fieldhub.notify.webhook import WebhookSender, retry_after_s, sign, verify_signature
from notify.conftest import DeliveryLog, HookServer, InstantTime, Reply

SECRET_ENV = "FIELDHUB_TEST_HOOK_SECRET"


def hook(url: str, key: str = "n-1", **kw: object) -> Notification:
    return Notification(
        kind="webhook",
        target=url,
        subject="Cold room above 8 °C",
        payload={"rule": "cold-room-high", "device": "3C:E9:0E:72:12:4C", "value": 8.4},
        key=key,
        created_us=1_700_000_000 * US_PER_S,
        secret_env=SECRET_ENV,
        **kw,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture(loop_scope="function")
async def sender(hook_secret: str, instant_time: InstantTime) -> AsyncIterator[WebhookSender]:
    secrets = {SECRET_ENV: hook_secret}
    sender = WebhookSender(secrets=secrets.get, clock=instant_time.clock)
    yield sender
    await sender.aclose()


async def send(
    notification: Notification,
    sender: WebhookSender,
    time: InstantTime,
    log: DeliveryLog,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> None:
    await deliver(
        notification,
        sender,
        policy=policy,
        clock=time.clock,
        sleep=time.sleep,
        rng=random.Random(7),
        on_delivery=log,
    )


async def test_delivered_signed_and_verified_by_the_receiver(
    hook_server: HookServer,
    sender: WebhookSender,
    instant_time: InstantTime,
    delivery_log: DeliveryLog,
    hook_secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await send(hook(hook_server.url()), sender, instant_time, delivery_log)

    [request] = hook_server.requests
    timestamp = request.headers["x-fieldhub-timestamp"]
    signature = request.headers["x-fieldhub-signature"]
    assert signature.startswith("sha256=")
    now_s = instant_time.clock.now_us() / US_PER_S
    assert timestamp == str(int(now_s))
    assert verify_signature(hook_secret, timestamp, request.body, signature, now_s=now_s)
    assert not verify_signature("not-the-secret", timestamp, request.body, signature, now_s=now_s)
    assert not verify_signature(hook_secret, timestamp, request.body + b" ", signature, now_s=now_s)
    # A replay ten minutes later is refused by the default tolerance.
    assert not verify_signature(hook_secret, timestamp, request.body, signature, now_s=now_s + 600)
    assert request.headers["x-fieldhub-delivery"] == "n-1"
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.body)
    assert body["key"] == "n-1"
    assert body["subject"] == "Cold room above 8 °C"
    assert body["payload"] == {
        "rule": "cold-room-high",
        "device": "3C:E9:0E:72:12:4C",
        "value": 8.4,
    }
    [delivery] = delivery_log.records
    assert (delivery.outcome, delivery.status, delivery.attempt) == ("delivered", 200, 1)
    assert hook_secret not in caplog.text
    assert hook_secret not in repr(delivery_log.records)


async def test_a_500_is_retried_with_backoff_and_the_same_key(
    hook_server: HookServer,
    sender: WebhookSender,
    instant_time: InstantTime,
    delivery_log: DeliveryLog,
    hook_secret: str,
) -> None:
    hook_server.script = [Reply(500), Reply(502), Reply(200)]
    await send(hook(hook_server.url()), sender, instant_time, delivery_log)

    assert [d.outcome for d in delivery_log.records] == ["retrying", "retrying", "delivered"]
    assert [d.status for d in delivery_log.records] == [500, 502, 200]
    assert len(hook_server.requests) == 3
    assert {r.headers["x-fieldhub-delivery"] for r in hook_server.requests} == {"n-1"}
    assert {r.body for r in hook_server.requests} == {hook_server.requests[0].body}
    # Full jitter: the first delay within [0, 1 s], the second within [0, 2 s].
    assert len(instant_time.slept) == 2
    assert 0 <= instant_time.slept[0] <= 1.0
    assert 0 <= instant_time.slept[1] <= 2.0
    # Each attempt is signed for its own time, and verifies.
    for request in hook_server.requests:
        ts = request.headers["x-fieldhub-timestamp"]
        assert verify_signature(
            hook_secret, ts, request.body, request.headers["x-fieldhub-signature"], now_s=int(ts)
        )


async def test_retry_after_is_honoured(
    hook_server: HookServer,
    sender: WebhookSender,
    instant_time: InstantTime,
    delivery_log: DeliveryLog,
) -> None:
    hook_server.script = [Reply(429, {"Retry-After": "42"}), Reply(503, {"Retry-After": "9999"})]
    await send(hook(hook_server.url()), sender, instant_time, delivery_log)

    assert [d.status for d in delivery_log.records] == [429, 503, 200]
    assert instant_time.slept[0] >= 42
    assert instant_time.slept[1] == 300  # within the 5 min cap


async def test_a_400_fails_at_once(
    hook_server: HookServer,
    sender: WebhookSender,
    instant_time: InstantTime,
    delivery_log: DeliveryLog,
) -> None:
    hook_server.script = [Reply(400)]
    await send(hook(hook_server.url()), sender, instant_time, delivery_log)

    [delivery] = delivery_log.records
    assert (delivery.outcome, delivery.status, delivery.attempt) == ("failed", 400, 1)
    assert len(hook_server.requests) == 1
    assert instant_time.slept == []


async def test_a_refused_connection_is_retried_eight_times_then_fails(
    refused_url: str,
    sender: WebhookSender,
    instant_time: InstantTime,
    delivery_log: DeliveryLog,
    hook_secret: str,
) -> None:
    await send(hook(refused_url), sender, instant_time, delivery_log)

    assert [d.attempt for d in delivery_log.records] == list(range(1, 9))
    assert [d.outcome for d in delivery_log.records] == ["retrying"] * 7 + ["failed"]
    assert all(d.status is None and d.error for d in delivery_log.records)
    assert "ClientConnectorError" in (delivery_log.records[0].error or "")
    policy = RetryPolicy()
    assert len(instant_time.slept) == 7
    for attempt, delay in enumerate(instant_time.slept, start=1):
        assert 0 <= delay <= policy.ceiling_s(attempt)
    assert hook_secret not in repr(delivery_log.records)


async def test_a_slow_server_times_out_and_is_retried(
    hook_server: HookServer,
    hook_secret: str,
    instant_time: InstantTime,
    delivery_log: DeliveryLog,
) -> None:
    release = threading.Event()
    hook_server.script = [Reply(200, hold=release)]
    sender = WebhookSender(
        secrets={SECRET_ENV: hook_secret}.get, clock=instant_time.clock, timeout_s=0.3
    )
    try:
        await send(
            hook(hook_server.url()), sender, instant_time, delivery_log, RetryPolicy(max_attempts=2)
        )
    finally:
        release.set()
        await sender.aclose()

    assert [d.outcome for d in delivery_log.records] == ["retrying", "delivered"]
    assert "Timeout" in (delivery_log.records[0].error or "")


async def test_a_missing_secret_fails_at_once_naming_the_variable(
    hook_server: HookServer, instant_time: InstantTime, delivery_log: DeliveryLog
) -> None:
    sender = WebhookSender(secrets={}.get, clock=instant_time.clock)
    try:
        await send(hook(hook_server.url()), sender, instant_time, delivery_log)
    finally:
        await sender.aclose()

    [delivery] = delivery_log.records
    assert delivery.outcome == "failed"
    assert delivery.error == f"secret {SECRET_ENV} is not set"
    assert hook_server.requests == []


async def test_unsigned_without_a_secret_env(
    hook_server: HookServer, instant_time: InstantTime, delivery_log: DeliveryLog
) -> None:
    sender = WebhookSender(secrets={}.get, clock=instant_time.clock)
    try:
        notification = hook(hook_server.url())
        unsigned = Notification(**{**_fields(notification), "secret_env": None})
        await send(unsigned, sender, instant_time, delivery_log)
    finally:
        await sender.aclose()

    [request] = hook_server.requests
    assert "x-fieldhub-signature" not in request.headers
    assert delivery_log.records[0].outcome == "delivered"


def _fields(notification: Notification) -> dict[str, object]:
    return {name: getattr(notification, name) for name in Notification.__slots__}


def test_url_tokens_are_not_shown() -> None:
    assert (
        redact_url("https://user:pw@hooks.example:8443/x/y?token=abc")
        == "https://hooks.example:8443/x/y?..."
    )
    assert redact_url("http://127.0.0.1:9/hook") == "http://127.0.0.1:9/hook"


def test_backoff_is_full_jitter_doubling_and_capped() -> None:
    policy = RetryPolicy()
    assert [policy.ceiling_s(n) for n in range(1, 11)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        300,
    ]
    rng = random.Random(1)
    delays = [policy.delay_s(3, rng) for _ in range(1000)]
    assert all(0 <= d <= 4 for d in delays)
    # Spread over the whole range.
    assert min(delays) < 0.5
    assert max(delays) > 3.5
    assert policy.delay_s(1, rng, retry_after_s=30) >= 30
    assert policy.delay_s(1, rng, retry_after_s=10_000) == 300


def test_retry_after_forms() -> None:
    assert retry_after_s("120", 0.0) == 120
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10
    assert retry_after_s("soon", 0.0) is None
    assert retry_after_s(None, 0.0) is None


def test_signature_format() -> None:
    # Receivers in any language compute it the same way: HMAC-SHA256 over "timestamp.body".
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign("k", "1700000000", b"{}") == "sha256=" + expected
    assert verify_signature("k", "1700000000", b"{}", "sha256=" + expected, tolerance_s=None)
    assert not verify_signature("k", "nope", b"{}", "sha256=" + expected)


def test_a_non_ascii_signature_header_is_refused_not_raised() -> None:
    assert not verify_signature("k", "1700000000", b"{}", "sha256=é", tolerance_s=None)
