"""Bulk restore of a table from its changelog, ahead of Faust's per-record recovery.

Why: Faust replays a changelog one record at a time (consumer thread -> conductor -> changelog
queue -> recovery loop -> ``on_changelog_event``), ~4k records/s on a 2-core machine. A worker
with 1M pending jobs and a wiped data directory replays every write ever made to its changelog
(Tansu never compacts; an uncompacted tail on Kafka too), which took 249 s. A plain consumer
reads the same partitions at well over 100k records/s, and RocksDB takes them in write batches.

How: :class:`RestoringTableManager` gives Faust a :class:`BulkRecovery`, which runs
:meth:`ChangelogRestorer.restore` for the tables registered with
:meth:`RestoringTableManager.add_restorer`, at two points of Faust's own recovery sequence
(``Recovery._restart_recovery``):

- active partitions: in ``_build_offsets``, once Faust has read the changelog highwaters. The
  restore reads up to those highwaters and never past them, so Faust's consistency check
  (persisted offset <= highwater) still means what it means on Kafka;
- standby partitions: in ``_seek_offsets``, just before Faust seeks and resumes them.

Each write batch holds a run of records in offset order, the id-index changes they imply
(:meth:`tables.store.PartitionStore.apply_restored`) and the persisted offset under Faust's own
key, so a crash or a rebalance in the middle leaves the database at a consistent offset. The
restore then hands over by moving Faust's start offset to the persisted offset: Faust replays
only what is left, through its usual path and checks. Nothing here depends on the broker; a
restore that does not finish within its time budget (or fails) just leaves more for Faust.

One fix to Faust's recovery itself: :class:`ChangelogQueue` keeps the standby records queued
when Faust resumes the flow at the end of a recovery (Faust dropped them, and the standby copy
then missed those writes for good).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP
from mode.utils.queues import ThrowableQueue

__all__ = [
    "BulkRecovery",
    "ChangelogQueue",
    "ChangelogRestorer",
    "RestoringTableManager",
    "standby_lag",
]

log = logging.getLogger(__name__)

#: ``(partition, [(key, value_or_None), ...], offset_of_the_last)`` -> False if not open.
ApplyRecords = Callable[[int, list[tuple[bytes, bytes | None]], int], bool]


class ChangelogRestorer:
    """Reads changelog partitions with a plain aiokafka consumer and applies them in batches."""

    def __init__(
        self,
        consumer_options: Callable[[], Mapping[str, Any]],
        apply: ApplyRecords,
        *,
        min_records: int = 1_000,
        max_poll_records: int = 20_000,
    ) -> None:
        #: Called at each restore: bootstrap servers and security options of the app's broker.
        self._consumer_options = consumer_options
        self._apply = apply
        #: Partitions with fewer records left are left to Faust (cheaper than a consumer of our
        #: own); 0 turns the bulk restore off.
        self.min_records = min_records
        self._max_poll_records = max_poll_records

    async def restore(
        self,
        topic: str,
        starts: Mapping[int, int],
        ends: Mapping[int, int] | None,
        budget_s: float,
        applied: dict[int, int],
    ) -> None:
        """Apply ``topic``'s records from ``starts[p]`` up to ``ends[p]`` (exclusive).

        ``ends`` None: the partitions' end offsets now. Only partitions with at least
        ``min_records`` offsets to go are read. ``applied[p]`` is kept at the offset of the last
        record applied (now the persisted offset), also when this fails half-way. Stops after
        ``budget_s`` seconds, or for a partition whose database is no longer open (revoked).
        """
        from aiokafka import AIOKafkaConsumer, TopicPartition

        deadline = time.monotonic() + budget_s
        if self.min_records <= 0:
            return
        consumer = AIOKafkaConsumer(
            **self._consumer_options(),
            group_id=None,
            enable_auto_commit=False,
            max_poll_records=self._max_poll_records,
            max_partition_fetch_bytes=4 * 1024**2,
            fetch_max_bytes=32 * 1024**2,
        )
        await consumer.start()
        try:
            tps = {p: TopicPartition(topic, p) for p in starts}
            consumer.assign(list(tps.values()))
            if ends is None:
                end_offsets = await consumer.end_offsets(list(tps.values()))
                ends = {tp.partition: offset for tp, offset in end_offsets.items()}
            todo = {p for p in starts if ends[p] - starts[p] >= self.min_records}
            for p, tp in tps.items():
                if p in todo:
                    consumer.seek(tp, starts[p])
                else:
                    consumer.pause(tp)
            while todo and time.monotonic() < deadline:
                fetched = await consumer.getmany(*(tps[p] for p in todo), timeout_ms=500)
                for tp, records in fetched.items():
                    p = tp.partition
                    wanted = [r for r in records if r.offset < ends[p]]
                    if p not in todo or not wanted:
                        continue
                    rows = [(r.key, r.value) for r in wanted if r.key is not None]
                    if len(rows) < len(wanted):
                        # Faust's replay cannot apply these either: leave them to it.
                        log.warning("changelog %s[%d]: record without a key, stop", topic, p)
                        todo.discard(p)
                        continue
                    last = wanted[-1].offset
                    if not self._apply(p, rows, last):
                        todo.discard(p)  # revoked meanwhile
                        continue
                    applied[p] = last
                for p in list(todo):
                    if await consumer.position(tps[p]) >= ends[p]:
                        todo.discard(p)
                        consumer.pause(tps[p])
        finally:
            await consumer.stop()


class ChangelogQueue(ThrowableQueue[Any]):
    """Faust's changelog queue, which can keep its records through one flow-control resume.

    Faust resumes flow twice in a rebalance: when its recovery starts, which rightly drops the
    records of the previous generation still queued, and again at the end
    (``Recovery.on_recovery_completed``). By then the queue holds standby records fetched
    after Faust seeked the standby partitions. Dropping those loses them for good: the consumer
    has moved past them, and the standby copy would miss writes (found by the chaos run: jobs
    written while a standby was catching up were gone after it became active).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set by :class:`BulkRecovery` around the resume at the end of a recovery.
        self.keep_on_resume = False

    def clear(self) -> None:
        if not self.keep_on_resume:
            super().clear()


class BulkRecovery(Recovery):
    """Faust's recovery, with a bulk restore before it reads registered tables' changelogs."""

    #: The longest one restore may take, as a share of the timeout Faust puts on the step.
    budget_share = 0.5

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        queue = self.tables.changelog_queue
        assert isinstance(queue, ChangelogQueue)  # RestoringTableManager builds it
        queue.keep_on_resume = True  # see ChangelogQueue
        try:
            await super().on_recovery_completed(generation_id)
        finally:
            queue.keep_on_resume = False

    async def _build_offsets(
        self, consumer: Any, tps: set[TP], destination: Any, title: str
    ) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if destination is self.active_offsets:
            # Faust's highwater is the offset of the last record (end offset - 1).
            ends = {
                tp: self.active_highwaters[tp] + 1 for tp in tps if tp in self.active_highwaters
            }
            await self._restore(tps, destination, ends)

    async def _seek_offsets(self, consumer: Any, tps: set[TP], offsets: Any, title: str) -> None:
        if offsets is self.standby_offsets:
            await self._restore(tps, offsets, None)
        await super()._seek_offsets(consumer, tps, offsets, title)

    async def _restore(
        self, tps: Iterable[TP], offsets: Any, ends: Mapping[TP, int] | None
    ) -> None:
        """Restore what is left of ``tps`` in bulk, then move ``offsets`` (Faust's start) on."""
        restorers: dict[Any, ChangelogRestorer] = getattr(self.tables, "restorers", {})
        by_table: dict[Any, list[TP]] = {}
        for tp in tps:
            table = self.tp_to_table.get(tp)
            if table in restorers:
                by_table.setdefault(table, []).append(tp)
        budget = float(self.app.conf.broker_request_timeout) * self.budget_share
        for table, table_tps in by_table.items():
            # Faust's offsets are those of the last record read (-1: none), so start after them.
            starts = {tp.partition: max(offsets[tp], -1) + 1 for tp in table_tps}
            part_ends = (
                None if ends is None else {tp.partition: ends.get(tp, 0) for tp in table_tps}
            )
            restorer = restorers[table]
            if restorer.min_records <= 0 or (
                part_ends is not None
                and not any(part_ends[p] - starts[p] >= restorer.min_records for p in starts)
            ):
                continue  # nothing worth a consumer of our own
            topic = table_tps[0].topic
            started = time.monotonic()
            applied: dict[int, int] = {}
            try:
                await restorer.restore(topic, starts, part_ends, budget, applied)
            except Exception:
                # What was written is consistent (offset in the same batch): Faust goes on from it.
                log.exception("bulk restore of %s failed; Faust's recovery takes over", topic)
            for tp in table_tps:
                if tp.partition in applied:
                    offsets[tp] = applied[tp.partition]
            count = sum(applied[p] + 1 - starts[p] for p in applied)
            log.info(
                "bulk restore of %s partitions %s: %d offsets in %.1f s",
                topic,
                sorted(applied),
                count,
                time.monotonic() - started,
            )


class RestoringTableManager(TableManager):
    """Faust's table manager with :class:`BulkRecovery` (``app.conf.TableManager``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.restorers: dict[Any, ChangelogRestorer] = {}

    async def on_start(self) -> None:
        # Faust's TableManager sleeps 1 s first (for tables defined after start); delayq's table
        # exists before the worker starts (tables/jobs.py), so every start is 1 s quicker.
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    @property
    def changelog_queue(self) -> ThrowableQueue[Any]:
        if self._changelog_queue is None:
            # Faust's own queue (TableManager.changelog_queue), as a ChangelogQueue.
            self._changelog_queue = ChangelogQueue(
                maxsize=self.app.conf.stream_buffer_maxsize,
                flow_control=self.app.flow_control,
                clear_on_resume=True,
            )
        return self._changelog_queue

    @property
    def recovery(self) -> BulkRecovery:
        if self._recovery is None:
            self._recovery = BulkRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        assert isinstance(self._recovery, BulkRecovery)
        return self._recovery

    def add_restorer(self, table: Any, restorer: ChangelogRestorer) -> None:
        """Restore ``table`` in bulk before Faust's recovery reads its changelog."""
        self.restorers[table] = restorer


async def standby_lag(app: Any, table: Any, timeout: float = 2.0) -> dict[int, int] | None:
    """Per standby partition of ``table``: changelog records its standby copy has not read yet.

    End offset (asked from the broker now: a fetch-response highwater goes stale when a
    partition stops being fetched) minus the offset Faust's standby read last. Records read are
    applied at the latest when the partition becomes active (in bulk), so 0 means a fail-over
    has nothing left to replay. None if the broker did not answer within ``timeout``.
    """
    changelog = table.changelog_topic.get_topic_name()
    tps = sorted(tp for tp in app.assignor.assigned_standbys() if tp.topic == changelog)
    if not tps:
        return {}
    try:
        ends = await asyncio.wait_for(app.consumer.highwaters(*tps), timeout)
    except Exception:  # no answer: unknown, not zero
        return None
    read = app.tables.recovery.standby_offsets
    lag: dict[int, int] = {}
    for tp in tps:
        end, last = ends.get(tp), read.get(tp)
        if end is not None:
            lag[tp.partition] = max(0, end - 1 - (-1 if last is None else last))
    return lag
