"""Faust's recovery with a bulk restore of registered tables before its per-record replay.

Why: Faust replays a changelog one record at a time (consumer thread -> conductor -> changelog
queue -> recovery loop -> ``on_changelog_event``), ~4k records/s on a 2-core machine. A worker
with 1M pending jobs and a wiped data directory replays every write ever made to its changelog,
which took 249 s; with :class:`tables.restore.ChangelogRestorer` (a plain consumer and RocksDB
write batches), 43.9 s.

How: :class:`RestoringTableManager` gives Faust a :class:`BulkRecovery`, which runs
:meth:`ChangelogRestorer.restore` for the tables registered with
:meth:`RestoringTableManager.add_restorer`, at two points of Faust's own recovery sequence
(``Recovery._restart_recovery``):

- active partitions: in ``_build_offsets``, once Faust has read the changelog highwaters. The
  restore reads up to those highwaters and never past them, so Faust's consistency check
  (persisted offset <= highwater) still means what it means on Kafka;
- standby partitions: in ``_seek_offsets``, just before Faust seeks and resumes them.

The restore then hands over by moving Faust's start offset to the persisted offset: Faust
replays only what is left, through its usual path and checks. A restore that does not finish
within its time budget (or fails) just leaves more for Faust.

One fix to Faust's recovery itself: :class:`ChangelogQueue` keeps the standby records queued
when Faust resumes the flow at the end of a recovery (Faust dropped them, and the standby copy
then missed those writes for good).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP
from mode.utils.queues import ThrowableQueue

import app.upstream  # noqa: F401  (checks the library versions first)
from tables.restore import ChangelogRestorer

__all__ = ["BulkRecovery", "ChangelogQueue", "RestoringTableManager", "void_replayed"]

log = logging.getLogger(__name__)


def void_replayed(event: Any, unused_key: bytes) -> None:
    """Make a changelog event Faust is replaying a no-op: the delete of ``unused_key``.

    Faust buffers replayed events and applies them later with no veto (faust/tables/recovery.py
    ``Recovery._slurp_changelogs``, lines 873-890, then ``Store.apply_changelog_batch``);
    ``on_changelog_event`` runs first, and this rewrites the message it will apply.
    Correctness (tables/store.py ``fresh``): no figure.
    """
    event.message.key, event.message.value = unused_key, None


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

    # Overrides mode/utils/queues.py ThrowableQueue.clear (lines 240-245). Correctness (the
    # chaos run lost 12 jobs without it): no figure.
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

    # Extends faust/tables/recovery.py Recovery._build_offsets (lines 717-747): the bulk restore
    # of active partitions. Measured: recovery of 1M pending jobs, data directory wiped, 249 s ->
    # 43.9 s (python -m bench, recovery scenario).
    async def _build_offsets(
        self, consumer: Any, tps: set[TP], destination: Any, title: str
    ) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if destination is self.active_offsets:
            self._replay_from_gaps(tps, destination)
            # Faust's highwater is the offset of the last record (end offset - 1).
            ends = {
                tp: self.active_highwaters[tp] + 1 for tp in tps if tp in self.active_highwaters
            }
            await self._restore(tps, destination, ends)

    def _replay_from_gaps(self, tps: Iterable[TP], offsets: Any) -> None:
        """Start an active partition's recovery before records its standby replay skipped.

        Faust's persisted offset passes records its replay dropped (tables/store.py
        ``replayed_at``); a partition that was a standby here would become active without them.
        """
        gaps: Mapping[Any, Any] = getattr(self.tables, "gap_sources", {})
        for tp in tps:
            table = self.tp_to_table.get(tp)
            gap_before = gaps.get(table)
            if gap_before is None:
                continue
            gap = gap_before(tp.partition)
            if gap is not None and gap < offsets[tp]:
                log.warning(
                    "%s: recovering from offset %d, before the records its replay skipped",
                    tp,
                    gap + 1,
                )
                offsets[tp] = gap

    # Extends faust/tables/recovery.py Recovery._seek_offsets (lines 759-770): the bulk restore
    # of standby partitions (same gain, for a fail-over; not measured on its own).
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
        self.gap_sources: dict[Any, Callable[[int], int | None]] = {}

    # Replaces faust/tables/manager.py TableManager.changelog_queue (lines 108-116), building
    # a ChangelogQueue in the private _changelog_queue.
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

    # Replaces faust/tables/manager.py TableManager.recovery (lines 118-125), building a
    # BulkRecovery in the private _recovery.
    @property
    def recovery(self) -> BulkRecovery:
        if self._recovery is None:
            self._recovery = BulkRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        assert isinstance(self._recovery, BulkRecovery)
        return self._recovery

    def add_restorer(self, table: Any, restorer: ChangelogRestorer) -> None:
        """Restore ``table`` in bulk before Faust's recovery reads its changelog."""
        self.restorers[table] = restorer

    def add_gap_source(self, table: Any, gap_before: Callable[[int], int | None]) -> None:
        """Ask ``gap_before(partition)`` where an active recovery of ``table`` must start."""
        self.gap_sources[table] = gap_before
