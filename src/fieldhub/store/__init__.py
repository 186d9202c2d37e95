"""Storage: one interface (`base.Store`), one implementation per database engine."""

from fieldhub.store.base import (
    DeadLetter,
    DeadLetterRow,
    DeviceRow,
    MetricSummary,
    ReadingRow,
    SeriesPoint,
    Store,
    StoreError,
    WriteBatch,
    WriteResult,
)
from fieldhub.store.open import open_store

__all__ = [
    "DeadLetter",
    "DeadLetterRow",
    "DeviceRow",
    "MetricSummary",
    "ReadingRow",
    "SeriesPoint",
    "Store",
    "StoreError",
    "WriteBatch",
    "WriteResult",
    "open_store",
]
