"""Choose a store implementation from a database URL."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fieldhub.store.base import Store
from fieldhub.store.types import StoreError


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///relative/path` or `sqlite:////absolute/path` URL."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise StoreError(
            f"{url!r}: write sqlite:///relative/file.db or sqlite:////absolute/file.db"
        )
    return Path(url[len(prefix) :])


def open_store(url: str, *, stale_after_s: Mapping[str, int] | None = None) -> Store:
    """A store for `url`, not yet opened. `stale_after_s` maps profile -> silence before stale."""
    if url.startswith("sqlite:"):
        from fieldhub.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url), stale_after_s=stale_after_s or {})
    if url.startswith(("postgresql:", "postgres:")):
        from fieldhub.store.postgres import PostgresStore

        return PostgresStore(url, stale_after_s=stale_after_s or {})
    raise StoreError(
        f"{url!r}: unsupported database URL; use sqlite:///path/to/fieldhub.db or "
        "postgresql://user@host:port/database"
    )
