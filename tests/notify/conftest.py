"""Real servers for the notification tests: an HTTP receiver in a thread, aiosmtpd, fake time.

`HookServer` is a real `http.server` on a free loopback port that records every request and
answers from a script (500 then 200, a Retry-After, a hold until the test releases it).
`FakeTime` is a `ManualClock` with a sleep that waits until the test moves the clock past it, so
backoffs and digest windows run without waiting for real.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session

from fieldhub.clock import ManualClock
from fieldhub.net import free_port
from fieldhub.notify.message import Delivery
from support.secrets import remember

# How long a held request waits for its release at most (a failing test must not hang).
HOLD_LIMIT_S = 30.0


@dataclass(frozen=True, slots=True)
class Received:
    """One request the hook server got."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None


class HookServer:
    """A webhook receiver: `script` answers requests in order (then 200), `requests` records."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[Reply] = []
        self.lock = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with server.lock:
                    server.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    reply = server.script.pop(0) if server.script else Reply()
                    server.lock.notify_all()
                if reply.hold is not None:
                    reply.hold.wait(HOLD_LIMIT_S)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the tests read `requests`."""

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    async def wait_requests(self, n: int, timeout_s: float = 10.0) -> None:
        """Wait until `n` requests have arrived (their replies may still be held)."""

        def arrived() -> bool:
            with self.lock:
                return self.lock.wait_for(lambda: len(self.requests) >= n, timeout_s)

        assert await asyncio.to_thread(arrived), f"{n} requests did not arrive"

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    server = HookServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_hook_server() -> Iterator[type[HookServer]]:
    """Start more than one receiver (a slow host and a fast one)."""
    started: list[HookServer] = []

    class Started(HookServer):
        def __init__(self) -> None:
            super().__init__()
            self.start()
            started.append(self)

    yield Started
    for server in started:
        server.stop()


@pytest.fixture
def refused_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/hook"


@pytest.fixture
def hook_secret() -> str:
    secret = "whsec-" + secrets.token_hex(16)
    remember(secret)
    return secret


class FakeTime:
    """A manual clock and a sleep that returns when `advance` moves the clock past its end."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._slept = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.clock.monotonic_s() + seconds, future))
        self._slept.set()
        await future

    @property
    def sleeping(self) -> int:
        return sum(1 for _, future in self._sleepers if not future.done())

    async def wait_sleeping(self, n: int, timeout_s: float = 5.0) -> None:
        """Wait (real time) until `n` sleeps are pending."""
        async with asyncio.timeout(timeout_s):
            while self.sleeping < n:
                self._slept.clear()
                await self._slept.wait()

    async def advance(self, seconds: float) -> None:
        """Move the clock on and wake every sleep that is due."""
        self.clock.advance(seconds)
        now = self.clock.monotonic_s()
        due = [(end, f) for end, f in self._sleepers if end <= now + 1e-9]
        self._sleepers = [(end, f) for end, f in self._sleepers if end > now + 1e-9]
        for _, future in due:
            if not future.done():
                future.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)


class InstantTime:
    """A manual clock and a sleep that moves it on at once (backoffs recorded, never waited)."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def instant_time() -> InstantTime:
    return InstantTime()


class DeliveryLog:
    """The delivery-log callback tests pass: records, and wakes waiters on each record."""

    def __init__(self) -> None:
        self.records: list[Delivery] = []
        self._changed = asyncio.Event()

    def __call__(self, delivery: Delivery) -> None:
        self.records.append(delivery)
        self._changed.set()

    def of(self, key: str) -> list[Delivery]:
        return [d for d in self.records if d.key == key]

    async def wait_for(self, key: str, outcome: str, timeout_s: float = 10.0) -> Delivery:
        """The first record of `key` with `outcome`, waiting for it (real time)."""
        async with asyncio.timeout(timeout_s):
            while True:
                for delivery in self.of(key):
                    if delivery.outcome == outcome:
                        return delivery
                self._changed.clear()
                await self._changed.wait()

    async def wait_delivered(self, n: int, timeout_s: float = 10.0) -> None:
        """Wait until `n` deliveries have been recorded (real time)."""
        async with asyncio.timeout(timeout_s):
            while sum(d.outcome == "delivered" for d in self.records) < n:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def delivery_log() -> DeliveryLog:
    return DeliveryLog()


# ---------------------------------------------------------------------------
# SMTP
# ---------------------------------------------------------------------------


class Mailbox:
    """An aiosmtpd handler keeping every message; RCPT for an address in `refuse` gets the
    given reply."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.refuse: dict[str, str] = {}
        self.received = threading.Event()

    async def handle_RCPT(
        self,
        server: object,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: object, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        self.received.set()
        return "250 Message accepted"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    """A plain SMTP server (no TLS, no login) on a free loopback port."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()
