"""SQLite-specific: WAL checkpoints happen in the background, not in the writer's commits."""

from __future__ import annotations

from pathlib import Path

from fieldhub.store.sqlite import WAL_AUTOCHECKPOINT_PAGES, SqliteStore
from fieldhub.store.types import WriteBatch
from support.store_rows import T0, S, msg
from support.waiting import wait_until

PAGE_BYTES = 4096


async def test_committed_pages_reach_the_database_file_without_a_writer_checkpoint(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    store = SqliteStore(db, stale_after_s={"native": 120})
    await store.open()
    try:
        empty_size = db.stat().st_size
        for batch in range(20):
            await store.write_batch(
                WriteBatch(
                    decoded=[
                        msg(f"dev-{d}", T0, [(f"m{m}", T0 + batch * S, float(m)) for m in range(5)])
                        for d in range(200)
                    ]
                )
            )
        wal_pages = (tmp_path / "t.db-wal").stat().st_size // PAGE_BYTES
        # Far below the writer's own threshold: only the background checkpointer moves pages.
        assert wal_pages < WAL_AUTOCHECKPOINT_PAGES
        wait_until(
            lambda: db.stat().st_size > empty_size + 50 * PAGE_BYTES,
            timeout_s=10,
            what="the background checkpoint to copy the WAL into the database file",
        )
    finally:
        await store.close()
