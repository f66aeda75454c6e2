"""Per-partition access to the jobs table's RocksDB databases.

Faust's table API routes every write through the current event, keeps a Python index of
recent keys, and sends changelog records through a buffer that drains one message per wake-up;
the engine needs none of that. It reads and writes the partition's own database and sends
changelog records straight to the producer, so that:

- writes go to the partition of the command being applied (co-partitioning by construction);
- the firing loop can scan one partition's due keys in byte (= due-time) order, seeking past
  tombstones to a watermark;
- no iterator or DB handle outlives one synchronous call, because Faust drops a revoked
  partition's DB without closing it and a live handle would keep the RocksDB lock.

Only the due keys are changelogged. The id index (``I`` keys) is local: the agent writes it with
each schedule, and :meth:`PartitionStore.index_restored` rebuilds it from every changelog record
Faust replays into the table (recovery and standby), so one record per change reaches Kafka.

The durability order of a command, and how this store's steps fit in it, is written once, as
numbered steps, in ``app.ingest.apply_batch``. If the producer gives up on a changelog record,
the ``failed`` callback stops commits for good (tables/rebuild.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Protocol

from rocksdict import ReadOptions, WriteBatch

from tables.keys import (
    DUE_PREFIX,
    GAP_KEY,
    TAG_KEY,
    UNACKED_KEY,
    decode_due_ms,
    encode_due_ms,
    index_entry,
)

__all__ = ["TAG_HEADER", "ChangelogRecord", "ChangelogSend", "PartitionDB", "PartitionStore"]

log = logging.getLogger(__name__)


class PartitionDB(Protocol):
    """The part of ``rocksdict.Rdict`` the store uses."""

    def get(self, key: bytes) -> bytes | None: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...
    def iter(self, options: Any) -> Any: ...
    def write(self, batch: WriteBatch) -> None: ...


#: A changelog record to send: key, value (None: a tombstone) and headers.
ChangelogRecord = tuple[bytes, bytes | None, list[tuple[str, bytes | None]]]
#: ``(partition, [record, ...])`` -> enqueue in order; per record, the ack future of its record
#: batch (its result's ``offset`` is the batch's first) and its index in the batch.
ChangelogSend = Callable[
    [int, Sequence[ChangelogRecord]], Awaitable[Sequence[tuple[Awaitable[Any], int]]]
]
#: The changelog header carrying the ingest offset of the command that made the record (for a
#: removal: the writer's applied offset then).
TAG_HEADER = "delayq-command"
#: ``(partition, changelog_offset)``: the change at this offset is in the local database.
PersistedOffset = Callable[[int, int], None]
#: Called with the error when the producer gave up on a changelog record.
ChangelogFailed = Callable[[BaseException], None]
#: ``offset`` -> the ``(key, value)`` that records it as the database's persisted changelog offset.
OffsetEntry = Callable[[int], tuple[bytes, bytes]]


class PartitionStore:
    """Reads, writes and scans one table partition at a time; due-key writes are changelogged."""

    def __init__(
        self,
        dbs: Callable[[], Mapping[int, PartitionDB]],
        open_db: Callable[[int], PartitionDB],
        send_changelog: ChangelogSend,
        persisted: PersistedOffset | None = None,
        failed: ChangelogFailed | None = None,
        offset_entry: OffsetEntry | None = None,
        persisted_of: Callable[[int], int | None] | None = None,
    ) -> None:
        #: Called each time: Faust creates the store lazily and drops revoked partitions.
        self._dbs = dbs
        self._open_db = open_db
        self._send_changelog = send_changelog
        self._persisted = persisted
        self._failed = failed
        self._offset_entry = offset_entry
        #: (partition, key, value, write locally once acknowledged) in write order.
        self._pending: list[
            tuple[int, bytes, bytes | None, bool, list[tuple[str, bytes | None]]]
        ] = []
        #: The persisted changelog offset of a partition's database (None: none yet).
        self._persisted_of = persisted_of
        #: partition -> the changelog offset its next record gets if nobody else writes there
        self._next_offset: dict[int, int] = {}
        #: partition -> the changelog offset Faust's replay should give next (replayed_at)
        self._replay_next: dict[int, int] = {}
        #: The ingest offset of the command being applied (the tag of the records it writes);
        #: set by the writer before each command (app.ingest). None: records go untagged.
        self.tag: int | None = None
        #: partition -> the highest tag a replay has met (see :meth:`fresh`)
        self._replay_tag: dict[int, int] = {}
        self._late_logged: set[int] = set()
        #: Replayed records skipped as a late writer's, since start.
        self.late_skipped = 0
        #: Partitions whose changelog got records from another writer since this one's last:
        #: their persisted offset stays where it was (see :meth:`_acked`).
        self.diverged: set[int] = set()
        #: partition -> the acks of its changelog records handed to the producer and not
        #: acknowledged yet; partitions in it hold :data:`UNACKED_KEY`.
        self._unacked: dict[int, set[asyncio.Future[Any]]] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The value at ``key`` in ``partition``, or None (also if its database is not open)."""
        db = self._dbs().get(partition)
        return None if db is None else db.get(key)

    def read(self, partition: int, key: bytes) -> bytes | None:
        """The value at ``key``, opening the partition's database if needed (for writers).

        Faust opens a partition's database lazily, and may not reopen it after a rebalance
        until something is written: a writer that took "not open" for "absent" would treat a
        replacement as a new job, miss a cancel and lose its replay mark.
        """
        return self._open_db(partition).get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        """Write locally now; the changelog record goes out with :meth:`flush_changelog`."""
        self._unacked_db(partition).put(key, value)
        self._pending.append((partition, key, value, False, self._tag_headers()))

    def put_once_acked(self, partition: int, key: bytes, value: bytes) -> None:
        """Changelog ``key`` with :meth:`flush_changelog`; write it locally once acknowledged.

        For a value the local database must not hold before the changelog does (the replay
        mark: app.ingest.apply_batch). Not written if the partition's database was dropped
        meanwhile.
        """
        self._pending.append((partition, key, value, True, self._tag_headers()))

    def delete(self, partition: int, key: bytes) -> None:
        """Delete locally now; the tombstone goes out with :meth:`flush_changelog`."""
        self._unacked_db(partition).delete(key)
        self._pending.append((partition, key, None, False, self._tag_headers()))

    def _unacked_db(self, partition: int) -> PartitionDB:
        """The partition's database, marked as holding unacknowledged changes (before they are
        written: the marker reaches the disk first) until :meth:`_settled` clears it."""
        db = self._open_db(partition)
        if partition not in self._unacked:
            db.put(UNACKED_KEY, b"")
            self._unacked[partition] = set()
        return db

    def _settled(self, partition: int, fut: asyncio.Future[Any]) -> None:
        """A flush's changelog records of the partition were acknowledged (or failed: then the
        table is rebuilt anyway, tables/rebuild.py). With none left, the marker goes."""
        left = self._unacked.get(partition)
        if left is None or fut not in left:
            return  # forgotten since (the partition left): its next assignment starts anew
        left.discard(fut)
        if left or any(entry[0] == partition for entry in self._pending):
            return
        del self._unacked[partition]
        db = self._dbs().get(partition)
        if db is not None:  # else revoked: a start that finds the marker restores it
            db.delete(UNACKED_KEY)

    def put_local(self, partition: int, key: bytes, value: bytes) -> None:
        """Write a derived key (the id index): never changelogged."""
        self._open_db(partition).put(key, value)

    def delete_local(self, partition: int, key: bytes) -> None:
        """Delete a derived key (the id index): never changelogged."""
        self._open_db(partition).delete(key)

    async def flush_changelog(self) -> None:
        """Hand every pending changelog record to the producer (each partition's in write order).

        Every batch's ack is checked for failure; only the last record of each partition
        records the persisted offset (the producer acks a partition's records in order, and the
        local database already holds them all). Records not handed over when the producer
        raises stay pending for the next flush.
        """
        by_partition: dict[
            int, list[tuple[bytes, bytes | None, bool, list[tuple[str, bytes | None]]]]
        ]
        by_partition = {}
        for partition, key, value, once_acked, headers in self._pending:
            by_partition.setdefault(partition, []).append((key, value, once_acked, headers))
        self._pending = []
        partitions = list(by_partition.items())
        for sent, (partition, entries) in enumerate(partitions):
            records = [(key, value, headers) for key, value, _once_acked, headers in entries]
            try:
                placed = await self._send_changelog(partition, records)
            except BaseException:
                # Writing a record twice is harmless (same key, same value, same order).
                unsent = [(p, *entry) for p, batch in partitions[sent:] for entry in batch]
                self._pending = unsent + self._pending
                raise
            for ack in {asyncio.ensure_future(ack) for ack, _index in placed}:
                ack.add_done_callback(self._check)
            for (key, value, once_acked, _h), (record_ack, _i) in zip(entries, placed, strict=True):
                if once_acked and value is not None:
                    write = functools.partial(self._write_acked, partition, key, value)
                    asyncio.ensure_future(record_ack).add_done_callback(write)
            if partition in self._unacked:
                flushed = asyncio.ensure_future(placed[-1][0])
                self._unacked[partition].add(flushed)
                flushed.add_done_callback(functools.partial(self._settled, partition))
            last, index = placed[-1]
            tag = _tag_of(entries[-1][3])
            callback = functools.partial(self._acked, partition, placed[0], index, tag)
            asyncio.ensure_future(last).add_done_callback(callback)

    def _check(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        exc = fut.exception()
        assert exc is not None
        log.critical("changelog write failed: %r", exc)
        if self._failed is not None:
            self._failed(exc)

    def _write_acked(
        self, partition: int, key: bytes, value: bytes, fut: asyncio.Future[Any]
    ) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # reported by _check
        db = self._dbs().get(partition)
        if db is not None:  # not revoked meanwhile (would reopen it)
            db.put(key, value)

    def _acked(
        self,
        partition: int,
        first: tuple[Awaitable[Any], int],
        index: int,
        tag: int | None,
        fut: asyncio.Future[Any],
    ) -> None:
        """Step 6 of the durability order: the persisted offset follows the changelog's acks.

        Only while this process is the changelog partition's only writer: a first record that
        does not land right after this process's previous one means another worker wrote there
        in between (the old owner's late records, or this process was a frozen owner whose
        partition moved). The local database lacks those records, so its persisted offset must
        not pass them: it stays, and the next recovery of the partition replays them.
        """
        if fut.cancelled() or fut.exception() is not None or self._persisted is None:
            return  # failed: reported by _check
        last_offset = fut.result().offset + index
        first_ack, first_index = first
        first_offset = asyncio.ensure_future(first_ack).result().offset + first_index
        expected = self._next_offset.get(partition)
        if expected is None and self._persisted_of is not None:
            persisted = self._persisted_of(partition)
            expected = None if persisted is None else persisted + 1
        self._next_offset[partition] = last_offset + 1
        if expected is not None and first_offset != expected and partition not in self.diverged:
            self.diverged.add(partition)
            log.warning(
                "changelog partition %d: records %d-%d were written by another worker; the "
                "local database no longer records its changelog offset (the next recovery "
                "replays them)",
                partition,
                expected,
                first_offset - 1,
            )
        if partition not in self.diverged:
            self._persisted(partition, last_offset)
            db = self._dbs().get(partition)
            if tag is not None and db is not None:  # after the offset: a crash leaves it lower
                db.put(TAG_KEY, encode_due_ms(tag))

    def _tag_headers(self) -> list[tuple[str, bytes | None]]:
        tag = self.tag
        return [] if tag is None or tag < 0 else [(TAG_HEADER, encode_due_ms(tag))]

    def fresh(self, partition: int, headers: Iterable[tuple[str, bytes | None]]) -> bool:
        """Whether a replayed changelog record is to be applied: False for a stale one.

        Each record is tagged with the ingest offset of the command that made it, and a writer
        applies commands in offset order. A record tagged below a tag the replay has already met
        comes from a writer that was behind: a frozen former owner whose queued records reached
        the broker after the new owner's (the new owner's own records for the same commands,
        with the same effects, came first). Applying it would bring back what the new owner had
        moved past. Untagged records (older data) are applied.
        """
        value = _tag_of(headers)
        if value is None:
            return True
        highest = self._replay_tag.get(partition, -1)
        if value < highest:
            if partition not in self._late_logged:  # once per replay: they come in runs
                self._late_logged.add(partition)
                log.warning(
                    "changelog partition %d: records of a late writer skipped (the first "
                    "tagged %d after %d)",
                    partition,
                    value,
                    highest,
                )
            self.late_skipped += 1
            return False
        self._replay_tag[partition] = value
        return True

    def replay_begins(self, partition: int, start: int | None = None) -> None:
        """A replay of ``partition`` starts at changelog offset ``start``.

        Right after the persisted offset, tags are compared from the tag of this process's own
        record there (:data:`TAG_KEY`): a frozen former owner's records that reached the
        changelog after this process's own are late even when they are the first replayed.
        From an earlier offset (a wiped database, a hole to fill), from the first record on.
        """
        self._replay_tag.pop(partition, None)
        self._late_logged.discard(partition)
        persisted = None if self._persisted_of is None else self._persisted_of(partition)
        db = self._dbs().get(partition)
        if start is None or persisted is None or start <= persisted or db is None:
            return
        raw = db.get(TAG_KEY)
        if raw is not None:
            self._replay_tag[partition] = decode_due_ms(raw)

    def forget(self, partition: int) -> None:
        """The partition left this worker: its next recovery sets where its changelog is."""
        self._unacked.pop(partition, None)
        self._next_offset.pop(partition, None)
        self._replay_next.pop(partition, None)
        self._replay_tag.pop(partition, None)
        self.diverged.discard(partition)

    def replayed_at(self, partition: int, offset: int) -> None:
        """A changelog record at ``offset`` is being replayed into ``partition`` (Faust's replay).

        Faust replays from the persisted offset on, one record after the other. A record beyond
        the next one means some were dropped on the way (Faust can drop queued standby records
        in a rebalance), and the persisted offset will pass them once later records are
        applied: the offset before the hole is kept under :data:`GAP_KEY`, so that the next
        active recovery replays from there (:meth:`gap_before`).
        """
        expected = self._replay_next.get(partition)
        if expected is None or offset < expected:
            self.replay_begins(partition, offset)  # a replay (re)starts here
        if expected is None and self._persisted_of is not None:
            persisted = self._persisted_of(partition)
            expected = None if persisted is None else persisted + 1
        self._replay_next[partition] = offset + 1
        if expected is None or offset <= expected:
            return  # the next one, or a replay started again from an earlier offset
        db = self._dbs().get(partition)
        if db is None:
            return
        held = db.get(GAP_KEY)
        if held is None or decode_due_ms(held) > expected - 1:
            db.put(GAP_KEY, encode_due_ms(max(expected - 1, 0)))
        log.warning(
            "changelog partition %d: replay skipped offsets %d-%d; the next active recovery "
            "replays from %d",
            partition,
            expected,
            offset - 1,
            expected,
        )

    def gap_before(self, partition: int) -> int | None:
        """The offset a recovery must start after, if a replay skipped records; clears it."""
        self._replay_next.pop(partition, None)
        self._replay_tag.pop(partition, None)
        db = self._dbs().get(partition)
        if db is None:
            return None
        held = db.get(GAP_KEY)
        if held is None:
            return None
        db.delete(GAP_KEY)
        return decode_due_ms(held)

    def index_restored(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Keep the id index in step with a due-key record replayed from the changelog."""
        if not key.startswith(DUE_PREFIX):
            return
        index_key, due = index_entry(key)
        if value is not None:
            self.put_local(partition, index_key, due)
        elif self.get(partition, index_key) == due:
            self.delete_local(partition, index_key)

    def apply_restored(
        self, partition: int, records: Iterable[tuple[bytes, bytes | None]], offset: int
    ) -> bool:
        """Apply changelog records (in offset order) up to ``offset`` in one atomic write.

        The bulk form of Faust's replay plus :meth:`index_restored`: the records, their id-index
        changes and the persisted offset go into one write batch, so a crash leaves the database
        at a consistent offset. False (nothing written) if the partition's database is not open:
        it was revoked, and must not be reopened here.
        """
        assert self._offset_entry is not None, "no persisted-offset encoding configured"
        db = self._dbs().get(partition)
        if db is None:
            return False
        batch = WriteBatch(raw_mode=True)
        # Id-index values written by this batch (None: deleted), which db.get cannot see yet.
        index: dict[bytes, bytes | None] = {}
        for key, value in records:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            if not key.startswith(DUE_PREFIX):
                continue
            index_key, due = index_entry(key)
            if value is not None:
                batch.put(index_key, due)
                index[index_key] = due
            elif (index[index_key] if index_key in index else db.get(index_key)) == due:
                batch.delete(index_key)
                index[index_key] = None
        batch.put(*self._offset_entry(offset))
        db.write(batch)
        self._replay_next[partition] = offset + 1  # Faust's replay goes on from here
        return True

    def scan(
        self, partition: int, start: bytes, stop: bytes, *, values: bool = True
    ) -> Generator[tuple[bytes, bytes], None, None]:
        """Items with ``start <= key < stop`` in byte order (values ``b""`` if not ``values``).

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
            yield it.key(), (it.value() if values else b"")
            it.next()
        del it, options


def _tag_of(headers: Iterable[tuple[str, bytes | None]]) -> int | None:
    """The tag of a changelog record (:data:`TAG_HEADER`), None if untagged."""
    tag = next((v for n, v in headers if n == TAG_HEADER and v is not None), None)
    return None if tag is None else decode_due_ms(tag)
