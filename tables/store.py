"""Per-partition access to the jobs table's RocksDB databases.

Faust's table API routes every write through the current event and keeps a Python index of
every key ever written; the engine needs neither. It reads and writes the partition's own
database and sends the changelog record itself, so that:

- writes go to the partition of the command being applied (co-partitioning by construction);
- the timer can scan one partition's due keys in byte (= due-time) order, seeking past
  tombstones to a watermark;
- no iterator or DB handle outlives one synchronous call, because Faust drops a revoked
  partition's DB without closing it and a live handle would keep the RocksDB lock.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any, Protocol

from rocksdict import ReadOptions

__all__ = ["ChangelogSink", "PartitionDB", "PartitionStore"]


class PartitionDB(Protocol):
    """The part of ``rocksdict.Rdict`` the store uses."""

    def get(self, key: bytes) -> bytes | None: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...
    def iter(self, options: Any) -> Any: ...


#: ``(partition, key, value_or_None)``: writes one changelog record.
ChangelogSink = Callable[[int, bytes, bytes | None], object]


class PartitionStore:
    """Reads, writes and scans one table partition at a time; every write is changelogged."""

    def __init__(
        self,
        dbs: Callable[[], Mapping[int, PartitionDB]],
        open_db: Callable[[int], PartitionDB],
        changelog: ChangelogSink,
    ) -> None:
        #: Called each time: Faust creates the store lazily and drops revoked partitions.
        self._dbs = dbs
        self._open_db = open_db
        self._changelog = changelog

    @classmethod
    def for_faust_table(cls, table: Any) -> PartitionStore:
        """The store behind a Faust table with a ``rocksdb://`` store (resolved lazily)."""
        return cls(
            lambda: table.data._dbs,
            lambda partition: table.data._db_for_partition(partition),
            table.send_changelog,
        )

    def has_partition(self, partition: int) -> bool:
        """Whether this worker holds the partition's database."""
        return partition in self._dbs()

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The value at ``key`` in ``partition``, or None."""
        db = self._dbs().get(partition)
        return None if db is None else db.get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        """Write locally, then to the changelog."""
        self._open_db(partition).put(key, value)
        self._changelog(partition, key, value)

    def delete(self, partition: int, key: bytes) -> None:
        """Delete locally, then tombstone the changelog."""
        self._open_db(partition).delete(key)
        self._changelog(partition, key, None)

    def scan(
        self, partition: int, start: bytes, stop: bytes
    ) -> Generator[tuple[bytes, bytes], None, None]:
        """Items with ``start <= key < stop`` in byte order.

        A generator: consume or close it before the next ``await``.
        """
        db = self._dbs().get(partition)
        if db is None:
            return
        options = ReadOptions()
        options.set_iterate_upper_bound(stop)
        # set_iterate_lower_bound is broken in rocksdict 0.3.29 (acts as an upper bound): seek.
        it = db.iter(options)
        it.seek(start)
        while it.valid():
            yield it.key(), it.value()
            it.next()
        del it, options
