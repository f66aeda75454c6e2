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


#: Faust's RocksDB defaults (64 MB memtables x 3 and a 2 GB block cache, per partition) keep a
#: whole queue in memory; pending jobs belong on disk, with a little cache for the hot front.
_ROCKSDB_OPTIONS = {
    "write_buffer_size": 2 * 1024**2,
    "max_write_buffer_number": 2,
    "block_cache_size": 4 * 1024**2,
}

jobs_table: Any = app.Table(
    names.JOBS_TABLE,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    on_changelog_event=_index_restored,
    options=dict(_ROCKSDB_OPTIONS),
)

jobs_store = PartitionStore.for_faust_table(jobs_table, app)
