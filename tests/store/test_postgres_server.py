"""The PostgreSQL test infrastructure: the session's private cluster and `backend_url`.

Runs while `BACKENDS` is still SQLite-only, so the fixtures the PostgreSQL store will use are
known to work before it lands.
"""

from __future__ import annotations

import asyncpg
import pytest

from support.postgres import PostgresServer

# Tables and other relations a test could have left: everything outside the system schemas.
USER_RELATIONS = """
    SELECT count(*) FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
"""


async def test_new_databases_are_distinct_and_empty(postgres_server: PostgresServer) -> None:
    first_url = postgres_server.new_database()
    second_url = postgres_server.new_database()
    assert first_url != second_url

    first = await asyncpg.connect(first_url)
    second = await asyncpg.connect(second_url)
    try:
        assert await first.fetchval(USER_RELATIONS) == 0
        assert await second.fetchval(USER_RELATIONS) == 0
        assert await first.fetchval("SELECT current_database()") != await second.fetchval(
            "SELECT current_database()"
        )
        await first.execute("CREATE TABLE only_here (x int)")
        assert await first.fetchval(USER_RELATIONS) == 1
        assert await second.fetchval(USER_RELATIONS) == 0
    finally:
        await first.close()
        await second.close()


async def test_cluster_is_private_and_tuned_for_tests(postgres_server: PostgresServer) -> None:
    connection = await asyncpg.connect(postgres_server.url)
    try:
        # Our own cluster, not the machine's server (port 5432, /var/lib/postgresql).
        assert postgres_server.port != 5432
        assert await connection.fetchval("SHOW data_directory") == str(postgres_server.data_dir)
        assert await connection.fetchval("SHOW listen_addresses") == "127.0.0.1"
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            assert await connection.fetchval(f"SHOW {setting}") == "off"
    finally:
        await connection.close()


def test_new_database_rejects_names_needing_quotes(postgres_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match="plain lower-case identifier"):
        postgres_server.new_database('x"; DROP DATABASE postgres; --')


@pytest.mark.parametrize("backend_url", ["postgresql"], indirect=True)
async def test_backend_url_gives_a_fresh_postgresql_database(backend_url: str) -> None:
    assert backend_url.startswith("postgresql://postgres@127.0.0.1:")
    connection = await asyncpg.connect(backend_url)
    try:
        assert await connection.fetchval("SELECT current_database()") not in (
            "postgres",
            "template0",
            "template1",
        )
        assert await connection.fetchval(USER_RELATIONS) == 0
    finally:
        await connection.close()
