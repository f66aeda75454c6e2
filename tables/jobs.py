"""The jobs table: pending jobs by due time, plus an id index (encoding in ``tables.keys``).

Raw bytes keys and values: ``key_type=bytes`` keeps key bytes as they are, so RocksDB's
bytewise order is due-time order and routing hashes the same bytes producers hash.
"""

from __future__ import annotations

from typing import Any

from app import names
from app.service import app, settings
from tables.store import PartitionStore

__all__ = ["jobs_store", "jobs_table"]

jobs_table: Any = app.Table(
    names.JOBS_TABLE,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
)

jobs_store = PartitionStore.for_faust_table(jobs_table)
