"""The jobs table: the Faust table, its partition store and its bulk restore, wired to the app.

Raw bytes keys and values (encoding in ``tables.keys``): ``key_type=bytes`` keeps key bytes as
they are, so RocksDB's bytewise order is due-time order and routing hashes the same bytes
producers hash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

from app import names
from app.service import app, freeze_watch, settings
from app.upstream import rocksdb
from app.upstream.producer import Record, send_batched_on
from app.upstream.recovery import RestoringTableManager, void_replayed
from tables.keys import STALE_KEY
from tables.rebuild import stop_for_rebuild
from tables.restore import ChangelogRestorer
from tables.store import ChangelogRecord, PartitionStore

__all__ = ["jobs_store", "jobs_table"]


async def _index_restored(event: Any) -> None:
    """Rebuild the local id index from each changelog record Faust replays into the table.

    Faust replays what the bulk restore (tables.restore) left: the last records of a recovery,
    and standby partitions while they follow the changelog.
    """
    message = event.message
    jobs_store.replayed_at(message.partition, message.offset)
    if not jobs_store.fresh(message.partition, message.headers or ()):
        void_replayed(event, STALE_KEY)  # a late writer's record (tables/store.py fresh)
        return
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
    raise RuntimeError("app.tables was created before app.jobs_table could install its manager")
app.conf.TableManager = RestoringTableManager  # type: ignore[assignment]  # (a Symbol setting)

jobs_table: Any = app.Table(
    names.JOBS_TABLE,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    on_changelog_event=_index_restored,
    options=dict(_ROCKSDB_OPTIONS),
)


def _changelog_topic() -> str:
    name: str = jobs_table.changelog_topic.get_topic_name()
    return name


async def _send_changelog(
    partition: int, records: Sequence[ChangelogRecord]
) -> Sequence[tuple[Awaitable[Any], int]]:
    freeze_watch.check()
    batch: list[Record] = [(key, value, headers) for key, value, headers in records]
    return await send_batched_on(app, _changelog_topic(), partition, batch)


def _changelog_failed(exc: BaseException) -> None:
    stop_for_rebuild(app, f"a changelog write failed: {exc!r}", exc)


jobs_store = PartitionStore(
    lambda: rocksdb.open_dbs(jobs_table),
    lambda partition: rocksdb.open_or_create_db(jobs_table, partition),
    _send_changelog,
    persisted=lambda partition, offset: rocksdb.set_persisted_offset(
        jobs_table, _changelog_topic(), partition, offset
    ),
    failed=_changelog_failed,
    offset_entry=lambda offset: rocksdb.persisted_offset_entry(jobs_table, offset),
    persisted_of=lambda partition: rocksdb.persisted_offset(
        jobs_table, _changelog_topic(), partition
    ),
)


def _consumer_options() -> dict[str, Any]:
    return {"bootstrap_servers": settings.bootstrap_servers, **settings.kafka_client_options()}


_manager = app.tables
assert isinstance(_manager, RestoringTableManager)
_manager.add_gap_source(jobs_table, jobs_store.gap_before)
_manager.add_restorer(
    jobs_table,
    ChangelogRestorer(
        _consumer_options,
        jobs_store.apply_restored,
        min_records=settings.bulk_restore_min_records,
        fresh=jobs_store.fresh,
        begin=jobs_store.replay_begins,
    ),
)
