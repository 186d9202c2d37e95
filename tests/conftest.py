"""Fixtures shared by the whole test suite.

Sections: helpers, then one section per external system (Mosquitto, PostgreSQL, ...).
Integration tests use the real thing; nothing here mocks a broker or database.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from prometheus_client import CollectorRegistry

from fieldhub.broker import BrokerStartError, MosquittoProcess
from fieldhub.events.bus import EventBus
from fieldhub.net import free_port
from support.postgres import PostgresServer, PostgresUnavailable
from support.rabbitmq import in_ci
from support.secrets import scan_logs

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def new_topic_prefix() -> str:
    """Return a topic prefix no other test (or test run) uses.

    Tests that share a broker subscribe below their own prefix, so they never
    see each other's messages, retained ones included.
    """
    return f"fieldhub-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique_topic_prefix() -> str:
    """A topic prefix unique to this test, e.g. `fieldhub-test/3f2a9c01b7de`."""
    return new_topic_prefix()


# ---------------------------------------------------------------------------
# Mosquitto
# ---------------------------------------------------------------------------

# free_port() cannot reserve the port: another process may take it before the
# broker binds. Retrying on a fresh port makes that race harmless.
BROKER_START_ATTEMPTS = 3


def start_mosquitto(data_dir: Path, *, port: int | None = None) -> MosquittoProcess:
    """Start a MosquittoProcess in `data_dir` on `port` (default: a free one)."""
    attempts = 1 if port is not None else BROKER_START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        broker = MosquittoProcess(data_dir=data_dir, port=port or free_port())
        try:
            broker.start()
        except BrokerStartError:
            if attempt == attempts:
                raise
            continue
        return broker
    raise AssertionError("unreachable")  # the loop returns or raises


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole run: no log any test produced (fieldhub's, Mosquitto's, the workers')
    holds a password, token or device secret the suite made (issue 15)."""
    yield
    leaks = scan_logs(tmp_path_factory.getbasetemp())
    if leaks:
        pytest.fail("secrets found in logs:\n" + "\n".join(leaks), pytrace=False)


class MosquittoFactory(Protocol):
    """Signature of the `mosquitto_factory` fixture."""

    def __call__(
        self, *, data_dir: Path | None = None, port: int | None = None
    ) -> MosquittoProcess:
        """Start a fresh broker; reuse `data_dir` to restart on saved state."""
        ...


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    """One broker for the whole session; use `unique_topic_prefix` on it."""
    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto-session"))
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[MosquittoFactory]:
    """Start private brokers (each on a free port); all are stopped at teardown."""
    started: list[MosquittoProcess] = []

    def make(*, data_dir: Path | None = None, port: int | None = None) -> MosquittoProcess:
        broker = start_mosquitto(data_dir or tmp_path / f"broker-{len(started)}", port=port)
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh Prometheus registry: metrics of one test never leak into another's."""
    return CollectorRegistry()


@pytest.fixture
def bus(registry: CollectorRegistry) -> EventBus:
    """An event bus with nobody subscribed yet."""
    return EventBus(registry)


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server(pytestconfig: pytest.Config) -> Iterator[PostgresServer]:
    """One private PostgreSQL cluster for the session (tests/support/postgres.py); give each
    test its own database with `postgres_server.new_database()`. Never the machine's server."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        if in_ci():
            pytest.fail(f"{exc}; CI must run the PostgreSQL tests")
        pytest.skip(str(exc))
    server.start()  # PostgresStartError (with the server's log tail) fails every test using it
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        # Output during a fixture's setup is captured (shown only for failing tests): lift the
        # capture so the start time is always on the terminal.
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\nPostgreSQL on port {server.port} ready in "
                f"{(server.initdb_s or 0) + (server.startup_s or 0):.1f} s "
                f"(initdb {server.initdb_s:.1f} s, start {server.startup_s:.1f} s)"
            )
    try:
        yield server
    finally:
        started = time.monotonic()
        server.stop()
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\nPostgreSQL stopped in {time.monotonic() - started:.1f} s")
