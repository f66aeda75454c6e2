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


async def _index_restored(event: Any) -> None:
    """Rebuild the local id index from each changelog record Faust replays into the table."""
    message = event.message
    jobs_store.index_restored(message.partition, message.key, message.value)


jobs_table: Any = app.Table(
    names.JOBS_TABLE,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    on_changelog_event=_index_restored,
)

jobs_store = PartitionStore.for_faust_table(jobs_table, app)
