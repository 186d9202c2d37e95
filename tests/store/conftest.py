"""Fixtures for the store tests: every test here runs once per storage backend.

Tests speak only the `Store` interface; `backend_url` gives each backend an empty database per
test (PostgreSQL: a fresh database on the session's private cluster, the `postgres_server`
fixture in tests/support/postgres.py). The fixtures run on the test's own event loop
(`loop_scope="function"`): a driver such as asyncpg binds its connections to the loop that
opened them, and the suite-wide default puts async fixtures on a session loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from fieldhub.store import Store, open_store
from support.postgres import PostgresServer

# Every store test runs on both engines; PostgreSQL on the session's private cluster.
BACKENDS = ["sqlite", "postgresql"]

# The profiles' silences before a device shows `stale`; tests pick times on either side of them.
STALE_AFTER_S = {"native": 120, "readings": 90}

Reopen = Callable[[Store], Awaitable[Store]]


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database of one backend, private to this test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/t.db"
    if request.param == "postgresql":
        # Looked up only here: SQLite-only runs never start the cluster.
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return server.new_database()
    raise AssertionError(f"no database for backend {request.param!r}")


@pytest_asyncio.fixture(loop_scope="function")
async def store(backend_url: str) -> AsyncIterator[Store]:
    """An opened store on an empty database; closed at teardown (closing twice is harmless)."""
    opened = open_store(backend_url, stale_after_s=STALE_AFTER_S)
    await opened.open()
    yield opened
    await opened.close()


@pytest_asyncio.fixture(loop_scope="function")
async def reopen(backend_url: str) -> AsyncIterator[Reopen]:
    """`await reopen(store)` closes `store` and returns a new store opened on the same database."""
    opened: list[Store] = []

    async def run(old: Store) -> Store:
        await old.close()
        new = open_store(backend_url, stale_after_s=STALE_AFTER_S)
        await new.open()
        opened.append(new)
        return new

    yield run
    for new in opened:
        await new.close()
