"""Retries: exponential backoff with full jitter, and the attempt loop every sender shares.

Full jitter (a delay drawn uniformly from 0 to 1 s, 2 s, 4 s ... capped at 5 min) spreads out
the retries of many notifications that failed together (a webhook host back after an outage),
where a fixed schedule would send them all again at the same instant.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from fieldhub.clock import SYSTEM_CLOCK, Clock
from fieldhub.notify.message import (
    Attempt,
    Delivery,
    DeliveryLog,
    Kind,
    Notification,
    Outcome,
    shown_target,
)

log = logging.getLogger("fieldhub.notify")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most `max_attempts` attempts; before attempt n+1 a delay drawn from
    [0, min(cap_s, base_s * 2**(n-1))], or a server's Retry-After (capped) when that is longer."""

    base_s: float = 1.0
    cap_s: float = 300.0
    max_attempts: int = 8

    def ceiling_s(self, attempt: int) -> float:
        """The longest delay after failed attempt `attempt` (1-based) before jitter."""
        return min(self.cap_s, self.base_s * 2.0 ** max(0, attempt - 1))

    def delay_s(
        self, attempt: int, rng: random.Random, retry_after_s: float | None = None
    ) -> float:
        """The delay after failed attempt `attempt`: full jitter, at least Retry-After."""
        delay = rng.uniform(0.0, self.ceiling_s(attempt))
        if retry_after_s is not None:
            delay = max(delay, min(self.cap_s, max(0.0, retry_after_s)))
        return delay


DEFAULT_POLICY = RetryPolicy()


class Sender(Protocol):
    """A transport: one attempt at delivering a notification, never raising for its failure."""

    @property
    def kind(self) -> Kind:
        """The kind of notification it sends."""
        ...

    async def attempt(self, notification: Notification) -> Attempt:
        """Try once."""
        ...


async def deliver(
    notification: Notification,
    sender: Sender,
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    clock: Clock = SYSTEM_CLOCK,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    on_delivery: DeliveryLog | None = None,
) -> Delivery:
    """Attempt `notification` until delivered, refused for good or out of attempts; each attempt
    becomes a `Delivery` handed to `on_delivery`. The last one is returned."""
    rng = rng or random.Random()
    target = shown_target(notification)
    attempt_no = 0
    while True:
        attempt_no += 1
        result = await sender.attempt(notification)
        retry_in: float | None = None
        if result.verdict == "delivered":
            outcome: Outcome = "delivered"
        elif result.verdict == "retry" and attempt_no < policy.max_attempts:
            outcome = "retrying"
            retry_in = policy.delay_s(attempt_no, rng, result.retry_after_s)
        else:
            outcome = "failed"
        delivery = Delivery(
            key=notification.key,
            kind=notification.kind,
            target=target,
            attempt=attempt_no,
            outcome=outcome,
            at_us=clock.now_us(),
            status=result.status,
            error=result.error,
            retry_in_s=retry_in,
            group=notification.group,
        )
        record(delivery, on_delivery)
        if retry_in is None:
            return delivery
        await sleep(retry_in)


def record(delivery: Delivery, on_delivery: DeliveryLog | None) -> None:
    """Log `delivery` and hand it to the delivery log (whose failure is logged, not raised: a
    broken log must not stop notifications)."""
    level = logging.INFO if delivery.outcome == "delivered" else logging.WARNING
    log.log(
        level,
        "notify %s %s key=%s target=%s attempt=%d%s%s%s",
        delivery.kind,
        delivery.outcome,
        delivery.key,
        delivery.target,
        delivery.attempt,
        f" status={delivery.status}" if delivery.status is not None else "",
        f" error={delivery.error}" if delivery.error else "",
        f" retry_in={delivery.retry_in_s:.1f}s" if delivery.retry_in_s is not None else "",
    )
    if on_delivery is None:
        return
    try:
        on_delivery(delivery)
    except Exception:
        log.exception("the delivery log failed on %s", delivery.key)
