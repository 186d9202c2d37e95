"""Storage: one interface (`base.Store`), one SQL core (`core.SqlStore`), one thin engine per
database (`sqlite.py`, `postgres.py`); docs/architecture.md shows how the modules fit."""

from fieldhub.store.base import Store
from fieldhub.store.open import open_store
from fieldhub.store.types import (
    DeadLetter,
    DeadLetterRow,
    DeviceRow,
    MetricSummary,
    ReadingRow,
    SeriesPoint,
    StoreError,
    StoreUnavailable,
    WriteBatch,
    WriteResult,
)

__all__ = [
    "DeadLetter",
    "DeadLetterRow",
    "DeviceRow",
    "MetricSummary",
    "ReadingRow",
    "SeriesPoint",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WriteBatch",
    "WriteResult",
    "open_store",
]
