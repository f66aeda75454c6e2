"""The jobs table: pending jobs by due time, plus an id index (encoding in ``tables.keys``).

Raw bytes keys and values: ``key_type=bytes`` keeps key bytes as they are, so RocksDB's
bytewise order is due-time order and routing hashes the same bytes producers hash.
"""

from __future__ import annotations

from typing import Any

from app import names
from app.service import app, settings
from tables.restore import ChangelogRestorer, RestoringTableManager
from tables.store import PartitionStore

__all__ = ["jobs_store", "jobs_table"]


async def _index_restored(event: Any) -> None:
    """Rebuild the local id index from each changelog record Faust replays into the table.

    Faust replays what the bulk restore (tables.restore) left: the last records of a recovery,
    and standby partitions while they follow the changelog.
    """
    message = event.message
    jobs_store.index_restored(message.partition, message.key, message.value)


#: Faust's RocksDB defaults (64 MB memtables x 3 and a 2 GB block cache, per partition) keep a
#: whole queue in memory; pending jobs belong on disk, with a little cache for the hot front.
_ROCKSDB_OPTIONS = {
    "write_buffer_size": 2 * 1024**2,
    "max_write_buffer_number": 2,
    "block_cache_size": 4 * 1024**2,
}

# The bulk restore needs Faust's recovery to go through RestoringTableManager, which must be in
# place before the first table creates app.tables.
if "tables" in app.__dict__ and not isinstance(app.tables, RestoringTableManager):
    raise RuntimeError("app.tables was created before tables.jobs could install its manager")
app.conf.TableManager = RestoringTableManager  # type: ignore[assignment]  # (a Symbol setting)

jobs_table: Any = app.Table(
    names.JOBS_TABLE,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    on_changelog_event=_index_restored,
    options=dict(_ROCKSDB_OPTIONS),
)

jobs_store = PartitionStore.for_faust_table(jobs_table, app)


def _consumer_options() -> dict[str, Any]:
    return {"bootstrap_servers": settings.bootstrap_servers, **settings.kafka_client_options()}


_manager = app.tables
assert isinstance(_manager, RestoringTableManager)
_manager.add_restorer(
    jobs_table,
    ChangelogRestorer(
        _consumer_options,
        jobs_store.apply_restored,
        min_records=settings.bulk_restore_min_records,
    ),
)
