"""The delay engine: applies commands to the jobs table and forwards what is due.

Two callers, one worker, one thread:

- the ingest agent calls :meth:`Engine.schedule`, :meth:`Engine.cancel` and
  :meth:`Engine.remove_fired` while it iterates its stream; these are the only table writes,
  so every write happens inside an event and goes to that event's partition;
- the firing loop (``app/timers.py``) calls :meth:`Engine.fire_due` with the clock, then sleeps
  until :meth:`Engine.next_wake_ms` or until the agent schedules something earlier.

Firing a partition (dramatiq's order: forward first, acknowledge second):

1. Scan the partition's due keys from its cursor up to ``now`` (behind the cursor every live job
   is in flight or waits for a retry; see :class:`_PartitionState`).
2. Send every due job to its target topic and mark it in flight (skipped by later scans).
3. In the background (:meth:`Engine._settle`), await the broker's acknowledgements; for each
   acknowledged job append ``(due key, version)`` to a *fired* record sent to the same partition
   of the fired topic. The next pass does not wait for this: a job due while the acks of the
   previous pass are on their way is sent on time.
4. The agent consumes the fired record and deletes the job, unless it was replaced or cancelled
   since (its version differs). Only then is the job gone from the table and its changelog.

A crash between 2 and 4 forwards the job again (same ``delayq-job-id``): at-least-once, never
lost. Removal through the fired topic means only the partition's current owner ever writes it.

Handing a partition over (a rebalance, a restart), so that the new owner does not forward again
what the previous one forwarded:

1. the previous owner finishes its pass, settles its forwards and flushes its producer before
   it lets the partition go (:meth:`Engine.quiesce`), so its removal records are in the fired
   topic;
2. the new owner sends a *fence* record (a random token) to the partition of the fired topic and
   does not fire the partition until the agent has read it back (:meth:`Engine.fence_passed`):
   by then every removal record before it has been applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
from collections import deque
from collections.abc import Awaitable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.errors import ForwardFailed
from app.jobs import (
    FENCE_PREFIX,
    Job,
    JobStatus,
    decode_job,
    encode_fired,
    encode_job,
    job_version,
)
from app.names import HEADER_ERROR
from app.times import MAX_DUE_MS, now_ms
from app.transport import Record
from tables.keys import (
    APPLIED_KEY,
    DUE_END,
    DUE_PREFIX,
    ID_END,
    ID_PREFIX,
    decode_due_ms,
    due_key,
    due_of,
    due_prefix,
    encode_due_ms,
    id_key,
    split_due_key,
)
from tables.store import PartitionStore

__all__ = ["DeadLetter", "Engine", "EngineConfig", "Producer", "Stats"]

log = logging.getLogger(__name__)

#: Beyond this many jobs written behind a partition's cursor, a pass walks from the earliest.
_BEHIND_MAX = 1_000
#: Event-loop turns the agent yields at most for a due pass to begin (it takes three).
_YIELDS_TO_PASS = 8
#: Retries of a failing forward are never spaced further apart than this.
_MAX_BACKOFF_MS = 60_000


class Producer(Protocol):
    """Faust's producer: ``send`` enqueues and returns the future of the broker's ack."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Awaitable[Any]: ...

    async def send_many(
        self, topic: str, partition: int | None, records: Sequence[Record]
    ) -> Sequence[tuple[Awaitable[Any], int]]:
        """Enqueue ``records`` in order; per record, its batch's ack future and its index in it.

        ``partition`` None: each record goes where its key hashes (app/transport.py).
        """
        ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The settings the engine uses (see ``app.settings.Settings``)."""

    fired_topic: str
    dead_letter_topic: str
    fire_batch_max: int = 2_000
    forward_timeout_s: float = 10.0
    forward_attempts: int = 5
    forward_retry_backoff_ms: int = 500
    ack_timeout_ms: int = 300_000
    #: Larger forwards are dead-lettered at once (match the target topics' max.message.bytes).
    max_forward_bytes: int = 1_000_000
    #: The loop wakes at least this often even with nothing due (a safety net, not the clock).
    max_idle_ms: int = 10_000
    #: A fence not read back by then is replaced by a new one (a lost record must not hold
    #: a partition forever).
    fence_resend_ms: int = 30_000
    #: Forwards whose acks may be awaited at once; a pass beyond it first waits for the oldest
    #: (passes come as often as jobs fall due, so their number is no bound).
    max_unsettled_forwards: int = 20_000
    #: Removals wait this long to share one fired record per partition: each record is one
    #: more event for the agent, and passes come as often as jobs fall due.
    removal_linger_ms: int = 50


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What the dashboard shows of a dead-lettered record."""

    at_ms: int
    key: bytes | None
    reason: str


@dataclass(slots=True)
class Stats:
    """Counters since the worker started; lateness of the most recent forwards.

    Lateness is forward time minus the later of the due time and the receipt of the schedule
    command (:attr:`app.jobs.Job.late_from_ms`): delayq's own delay, not a job's age.
    """

    scheduled: int = 0
    replaced: int = 0
    cancelled: int = 0
    cancel_unknown: int = 0
    fired: int = 0
    removed: int = 0
    forward_failures: int = 0
    dead_lettered: int = 0
    #: ``delayq-delay-ms`` records whose timestamp was in the future: counted from receipt.
    clock_skew_corrected: int = 0
    #: Ingest commands delivered again after a crash and not applied twice.
    replays_skipped: int = 0
    #: Ingest commands Faust skipped, read back and applied (see app/gaps.py).
    gaps_read_back: int = 0
    #: Records of partitions this worker no longer owned when it got to them (not applied).
    not_owned_skipped: int = 0
    #: Schedules whose due time had passed when delayq received them (late from receipt).
    arrived_past_due: int = 0
    lateness_ms: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))
    recent_dead_letters: deque[DeadLetter] = field(default_factory=lambda: deque(maxlen=100))

    def dead_lettered_now(self, key: bytes | None, reason: str) -> None:
        """Count a dead letter and remember it among the recent ones."""
        self.dead_lettered += 1
        self.recent_dead_letters.append(DeadLetter(now_ms(), key, reason))


@dataclass(slots=True)
class _PartitionState:
    #: No live due key lies below this due time (lets scans seek past tombstones).
    watermark_ms: int = 0
    #: Passes scan from this due key: every live job before it is in flight, waits for a
    #: retry or is in ``behind``, so a pass does not walk again over the jobs whose removal is
    #: on its way.
    cursor: bytes = DUE_PREFIX
    #: Due keys written (or whose forward was lost) behind the cursor: looked up one by one.
    behind: set[bytes] = field(default_factory=set)
    #: When a job behind the cursor needs a look (a retry or an ack timeout); None: none does.
    recheck_ms: int | None = None
    #: Nothing at or after the cursor is due before this: a pass skips the partition until then
    #: (passes come as often as jobs fall due; most partitions have nothing due in each).
    next_due_ms: int = 0
    #: due key -> (version, forward again after this ms): forwarded, removal not yet seen.
    in_flight: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    #: due key -> not before this ms: a failed forward waiting for its retry.
    retry_at: dict[bytes, int] = field(default_factory=dict)
    attempts: dict[bytes, int] = field(default_factory=dict)
    #: Pending jobs in the partition; None until counted after an assignment change.
    pending: int | None = None
    #: While set, the partition is not fired: its fence record has not been read back yet.
    fence: bytes | None = field(default_factory=lambda: _new_fence())  # defined below
    #: When the fence was sent; None until then (and after the broker refused it).
    fence_sent_ms: int | None = None
    #: Highest ingest offset applied by this process (the database's mark may lag behind it
    #: until the broker acknowledges the changelog: Engine.mark_applied). None: see the database.
    applied: int | None = None


@dataclass(slots=True)
class _Forward:
    partition: int
    due_key: bytes
    job: Job
    ack: Awaitable[Any] | None = None
    error: BaseException | None = None


class Engine:
    """Table mutations for the agent, and the firing pass for the loop."""

    def __init__(self, store: PartitionStore, producer: Producer, config: EngineConfig) -> None:
        self.store = store
        self.producer = producer
        self.config = config
        self.stats = Stats()
        self._parts: dict[int, _PartitionState] = {}
        self._generation: int | None = None
        self._wake = asyncio.Event()
        #: When the loop plans to wake; None while a pass runs (any schedule then wakes it).
        self._planned_wake_ms: int | None = None
        self._next_wake_ms: int | None = None
        #: Held by a firing pass; :meth:`quiesce` takes it to wait for the pass to end.
        self._pass_lock = asyncio.Lock()
        #: Passes whose forwards await their acks and removal records (see :meth:`_settle`).
        self._settling: set[asyncio.Task[None]] = set()
        self._unsettled = 0
        #: Acknowledged forwards whose removal record is not sent yet, by partition.
        self._removals: dict[int, list[tuple[bytes, int]]] = {}
        self._removal_sender: asyncio.Task[None] | None = None
        self._removals_now = asyncio.Event()

    def _state(self, partition: int) -> _PartitionState:
        state = self._parts.get(partition)
        if state is None:
            state = self._parts[partition] = _PartitionState()
        return state

    # -- commands, applied by the agent inside stream iteration ---------------------------

    def applied_offset(self, partition: int) -> int:
        """The highest ingest offset applied in ``partition`` (-1 if none): a replay guard.

        Faust re-delivers what came after the last committed offset after a crash; applying
        such a schedule again would bring back a job that was cancelled or fired since.
        """
        state = self._parts.get(partition)
        if state is not None and state.applied is not None:
            return state.applied
        raw = self.store.read(partition, APPLIED_KEY)
        return -1 if raw is None else decode_due_ms(raw)

    def mark_applied(self, partition: int, offset: int) -> None:
        """Record that the commands up to ``offset`` are applied (changelogged with them).

        The local database gets the mark only once the broker acknowledged its changelog
        record, which follows the commands' own records: a worker killed before that keeps its
        old mark, even with its data directory kept, so it applies those commands again when
        Faust delivers them again, and the changelog gets them then. A mark written locally
        first would make it skip them as applied, while the changelog (so a standby, or a
        restore from it) never got their changes. Until then this process goes by its own
        record of the mark.
        """
        self._state(partition).applied = offset
        self.store.put_once_acked(partition, APPLIED_KEY, encode_due_ms(offset))

    def schedule(self, partition: int, job: Job, received_ms: int) -> None:
        """Store ``job``, replacing any pending job with the same id.

        ``received_ms`` is when delayq received the command: a job already past due then keeps
        it, so that its lateness counts from there (and across a restart: it is stored).
        """
        if job.due_ms < received_ms:
            job = dataclasses.replace(job, received_ms=received_ms)
            self.stats.arrived_past_due += 1
        old_index = self.store.read(partition, id_key(job.job_id))
        new_key = due_key(job.due_ms, job.job_id)
        state = self._state(partition)
        if old_index is None:
            if state.pending is not None:
                state.pending += 1
        else:
            self.stats.replaced += 1
            old_key = due_key(decode_due_ms(old_index), job.job_id)
            if old_key != new_key:
                self.store.delete(partition, old_key)
        self.store.put(partition, new_key, encode_job(job))
        index = encode_due_ms(job.due_ms)
        if old_index != index:
            self.store.put_local(partition, id_key(job.job_id), index)
        state.retry_at.pop(new_key, None)
        state.attempts.pop(new_key, None)
        self.stats.scheduled += 1
        self._note_due(state, new_key)

    def cancel(self, partition: int, job_id: bytes) -> bool:
        """Remove the pending job ``job_id``; False if there is none."""
        index = self.store.read(partition, id_key(job_id))
        if index is None:
            self.stats.cancel_unknown += 1
            return False
        self.store.delete(partition, due_key(decode_due_ms(index), job_id))
        self.store.delete_local(partition, id_key(job_id))
        self._uncount(partition)
        self.stats.cancelled += 1
        return True

    async def flush(self) -> None:
        """Send the changelog records of the commands applied so far (the agent calls it)."""
        await self.store.flush_changelog()

    def get(self, partition: int, job_id: bytes) -> Job | None:
        """The pending job ``job_id`` in ``partition``, or None."""
        index = self.store.get(partition, id_key(job_id))
        if index is None:
            return None
        raw = self.store.get(partition, due_key(decode_due_ms(index), job_id))
        return None if raw is None else decode_job(raw)

    def remove_fired(self, partition: int, entries: Sequence[tuple[bytes, int]]) -> None:
        """Delete forwarded jobs, each only if still the version that was forwarded."""
        state = self._state(partition)
        for key, version in entries:
            flight = state.in_flight.get(key)
            if flight is not None and flight[0] == version:
                del state.in_flight[key]
            raw = self.store.read(partition, key)
            if raw is None:
                continue  # cancelled after it was forwarded
            if job_version(raw) != version:
                # Replaced with the same due time while in flight: the replacement is due.
                self._note_due(state, key)
                continue
            due_ms, job_id = split_due_key(key)
            self.store.delete(partition, key)
            if self.store.read(partition, id_key(job_id)) == encode_due_ms(due_ms):
                self.store.delete_local(partition, id_key(job_id))
            self._uncount(partition)
            self.stats.removed += 1

    def _uncount(self, partition: int) -> None:
        state = self._state(partition)
        if state.pending is not None:
            state.pending -= 1

    # -- reads (for views) -----------------------------------------------------------------

    def pending_count(self, active: Collection[int]) -> int:
        """Pending jobs in the ``active`` partitions: O(1) once each partition was counted."""
        total = 0
        for partition in active:
            state = self._state(partition)
            if state.pending is None:  # once per assignment: count the id index
                scan = self.store.scan(partition, ID_PREFIX, ID_END, values=False)
                state.pending = sum(1 for _ in scan)
            total += state.pending
        return total

    def earliest(
        self, active: Collection[int], limit: int, before_ms: int | None = None
    ) -> list[Job]:
        """The ``limit`` earliest pending jobs of ``active`` partitions due before ``before_ms``."""
        stop = DUE_END if before_ms is None else due_prefix(max(before_ms, 0))
        found: list[Job] = []
        for partition in active:
            scan = self.store.scan(partition, due_prefix(self._state(partition).watermark_ms), stop)
            try:
                for _key, raw in itertools.islice(scan, limit):
                    found.append(decode_job(raw))
            finally:
                scan.close()
        found.sort(key=lambda job: (job.due_ms, job.job_id))
        return found[:limit]

    def timeline(
        self,
        active: Collection[int],
        start_ms: int,
        bucket_ms: int,
        buckets: int,
        max_scan: int = 200_000,
    ) -> tuple[list[int], bool]:
        """Pending jobs per ``bucket_ms`` bucket from ``start_ms``; False if ``max_scan`` cut it.

        Bounded so that a dashboard refresh never blocks the worker for long.
        """
        counts = [0] * buckets
        budget = max_scan
        stop = due_prefix(start_ms + bucket_ms * buckets)
        for partition in active:
            scan = self.store.scan(partition, due_prefix(start_ms), stop, values=False)
            try:
                for key, _raw in scan:
                    if budget == 0:
                        return counts, False
                    budget -= 1
                    counts[(due_of(key) - start_ms) // bucket_ms] += 1
            finally:
                scan.close()
        return counts, True

    def status(self, partition: int, job: Job) -> JobStatus:
        """Pending, or in flight (forwarded, removal not yet applied)."""
        flight = self._state(partition).in_flight.get(due_key(job.due_ms, job.job_id))
        return JobStatus.IN_FLIGHT if flight and flight[0] == job.version else JobStatus.PENDING

    def _note_due(self, state: _PartitionState, key: bytes) -> None:
        due_ms = due_of(key)
        if due_ms < state.watermark_ms:
            state.watermark_ms = due_ms
        self._put_behind(state, key)
        planned = self._planned_wake_ms
        if planned is None or due_ms < planned:
            self._wake.set()

    # -- assignment --------------------------------------------------------------------

    def sync_assignment(self, generation: int, active: Collection[int]) -> None:
        """Forget revoked partitions; after any rebalance rescan the rest from the start.

        A rebalance may have restored changelog records into a partition without the agent
        seeing them, so watermarks are reset. A partition new to this worker gets a fence
        (see the module doc) and is not fired until the fence is read back.
        """
        for partition in list(self._parts):
            if partition not in active:
                del self._parts[partition]
        for partition in active:
            self._state(partition)
        if generation != self._generation:
            self._generation = generation
            for state in self._parts.values():
                state.watermark_ms = 0
                state.cursor = DUE_PREFIX
                state.behind.clear()
                state.next_due_ms = 0
                state.pending = None

    async def quiesce(self, revoked: Collection[int]) -> None:
        """Before partitions are handed over: let the running pass end, forget the partitions.

        The caller then flushes the producer, so their removal records reach the fired topic
        before the next owner's fence. A partition forgotten here is fenced again if it stays
        with (or comes back to) this worker, so no later pass fires it before that.
        """
        try:
            async with asyncio.timeout(self.config.forward_timeout_s * 2):
                async with self._pass_lock:
                    await self.settled()
        except TimeoutError:
            log.warning("a firing pass did not end before the partitions were handed over")
        for partition in revoked:
            self._parts.pop(partition, None)

    async def send_fences(self, active: Collection[int], now: int) -> None:
        """Send the fence record of every active partition that waits for one."""
        for partition in active:
            state = self._state(partition)
            if state.fence is None:
                continue
            if state.fence_sent_ms is not None:
                if now - state.fence_sent_ms < self.config.fence_resend_ms:
                    continue
                log.warning("partition %d: fence not read back in time, sending another", partition)
                state.fence = _new_fence()
            ack = await self.producer.send(
                self.config.fired_topic, state.fence, b"", partition, None, None
            )
            state.fence_sent_ms = now
            _as_future(ack).add_done_callback(functools.partial(_fence_lost, state, state.fence))

    def fence_passed(self, partition: int, fence: bytes) -> None:
        """The agent read ``fence`` back: the removals sent before it are applied."""
        state = self._parts.get(partition)
        if state is not None and state.fence == fence:
            state.fence = None
            self._wake.set()

    def fenced(self, partition: int) -> bool:
        """Whether the partition waits for its fence (not fired meanwhile; new ones do)."""
        return self._state(partition).fence is not None

    # -- firing --------------------------------------------------------------------------

    async def fire_due(self, now: int, active: Sequence[int]) -> int:
        """Send every job due at ``now`` in the ``active`` partitions; return the next wake.

        The acks are awaited in the background (:meth:`_settle`; :meth:`settled` waits for
        them). The return value is the epoch ms at which something may next be due (``now``
        when a batch was full and more is due already).
        """
        self._planned_wake_ms = None
        self._wake.clear()
        wake = now + self.config.max_idle_ms
        async with self._pass_lock:
            await self._room_to_settle()
            forwards: list[_Forward] = []
            for partition in active:
                if self.fenced(partition):
                    continue
                batch, partition_wake = self._collect_due(partition, now)
                forwards.extend(batch)
                wake = min(wake, partition_wake)
            if forwards:
                # Across partitions too, send in due order (stable sort: ties keep key order).
                forwards.sort(key=lambda fwd: fwd.job.due_ms)
                await self._send(forwards, now)
                task = asyncio.ensure_future(self._settle(forwards, now))
                self._settling.add(task)
                self._unsettled += len(forwards)
                task.add_done_callback(functools.partial(self._settled_one, len(forwards)))
        self._next_wake_ms = wake
        return wake

    async def settled(self) -> None:
        """Wait until every forward sent so far is acknowledged and its removal record sent."""
        while self._settling or self._removal_sender is not None:
            if self._settling:
                await asyncio.gather(*self._settling, return_exceptions=True)
            sender = self._removal_sender
            if sender is not None:
                self._removals_now.set()  # no linger: someone waits
                await asyncio.gather(sender, return_exceptions=True)

    def _settled_one(self, count: int, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        self._unsettled -= count

    async def _room_to_settle(self) -> None:
        # Bounds the forwards awaiting acks (memory) when a backlog is due.
        while self._settling and self._unsettled >= self.config.max_unsettled_forwards:
            await asyncio.wait(self._settling, return_when=asyncio.FIRST_COMPLETED)

    def _collect_due(self, partition: int, now: int) -> tuple[list[_Forward], int]:
        """Due jobs of one partition (earliest first) and when it next needs a look."""
        state = self._state(partition)
        idle_wake = now + self.config.max_idle_ms
        recheck = state.recheck_ms
        if recheck is not None and recheck <= now:
            # A retry or an ack timeout behind the cursor has come: walk from the front again.
            state.recheck_ms = None
            self._rescan_from(state, due_prefix(state.watermark_ms))
        elif state.next_due_ms > now:
            return [], min(idle_wake, state.next_due_ms, recheck or idle_wake)
        if len(state.behind) > _BEHIND_MAX:  # one walk costs less than so many lookups
            self._rescan_from(state, min(state.behind))
        batch: list[_Forward] = []
        if state.behind:
            self._collect_behind(partition, state, now, batch)
        from_front = state.cursor <= due_prefix(state.watermark_ms)
        first_due = self._scan_due(partition, state, now, batch)
        if state.behind:
            state.next_due_ms = min(state.next_due_ms, *(due_of(key) for key in state.behind))
        if from_front:
            front = now if first_due is None else first_due
            state.watermark_ms = min([front, *(due_of(key) for key in state.behind)])
        elif not state.in_flight and not state.retry_at and not state.behind:
            state.watermark_ms = due_of(state.cursor) if len(state.cursor) > 1 else 0
        if len(batch) >= self.config.fire_batch_max:
            return batch, now
        return batch, min(idle_wake, state.next_due_ms, state.recheck_ms or idle_wake)

    def _scan_due(
        self, partition: int, state: _PartitionState, now: int, batch: list[_Forward]
    ) -> int | None:
        """Add due jobs from the cursor on to ``batch``; move the cursor; the first due seen."""
        first_due: int | None = None
        cursor = state.cursor
        scan = self.store.scan(partition, cursor, DUE_END)
        try:
            for key, raw in scan:
                if len(batch) >= self.config.fire_batch_max:
                    break
                due_ms = due_of(key)
                if first_due is None:
                    first_due = due_ms
                if due_ms > now:
                    cursor = key
                    state.next_due_ms = due_ms
                    break
                cursor = key + b"\0"
                waits_until = _waits_until(state, key, now)
                if waits_until is None:
                    batch.append(_Forward(partition, key, decode_job(raw)))
                else:
                    self._recheck(state, waits_until)
            else:  # nothing after the cursor: only a write (which lowers this) makes work
                state.next_due_ms = MAX_DUE_MS
        finally:
            scan.close()
        state.cursor = cursor
        return first_due

    def _collect_behind(
        self, partition: int, state: _PartitionState, now: int, batch: list[_Forward]
    ) -> None:
        """Add the due jobs among those written behind the cursor to ``batch``."""
        keep: set[bytes] = set()
        for key in sorted(state.behind):
            if due_of(key) > now or len(batch) >= self.config.fire_batch_max:
                keep.add(key)
                continue
            raw = self.store.get(partition, key)
            if raw is None:
                continue  # cancelled, replaced or removed since
            if _waits_until(state, key, now) is None:  # else a recheck covers it
                batch.append(_Forward(partition, key, decode_job(raw)))
        state.behind = keep

    @staticmethod
    def _rescan_from(state: _PartitionState, key: bytes) -> None:
        """Let the next scan walk from ``key`` (it finds the jobs behind the cursor too)."""
        state.cursor = min(state.cursor, key)
        state.behind = {k for k in state.behind if k < state.cursor}

    @staticmethod
    def _recheck(state: _PartitionState, at_ms: int) -> None:
        if state.recheck_ms is None or at_ms < state.recheck_ms:
            state.recheck_ms = at_ms

    @staticmethod
    def _put_behind(state: _PartitionState, key: bytes) -> None:
        """A job at ``key`` may be due and is not in flight: make sure a pass looks at it."""
        if key < state.cursor:
            state.behind.add(key)
        state.next_due_ms = min(state.next_due_ms, due_of(key))

    async def _send(self, forwards: list[_Forward], now: int) -> None:
        """Mark the forwards in flight and hand them to the producer, each target in due order."""
        expires = now + self.config.ack_timeout_ms
        by_target: dict[str, list[_Forward]] = {}
        for fwd in forwards:
            state = self._state(fwd.partition)
            state.in_flight[fwd.due_key] = (fwd.job.version, expires)
            self._recheck(state, expires)
            by_target.setdefault(fwd.job.target, []).append(fwd)
        # One sender per target: a target that stalls (e.g. waiting for metadata of a missing
        # topic) delays only its own jobs, and each target still gets its jobs in due order.
        await asyncio.gather(*(self._send_target(t, batch) for t, batch in by_target.items()))

    async def _settle(self, forwards: list[_Forward], now: int) -> None:
        """Await the acks of one pass; send removals for the acknowledged, retry the rest."""
        try:
            await self._await_acks(forwards)
            fired: dict[int, list[tuple[bytes, int]]] = {}
            retrying = False
            for fwd in forwards:
                if fwd.error is None:
                    self.stats.fired += 1
                    self.stats.lateness_ms.append(now - fwd.job.late_from_ms)
                elif await self._give_up(fwd, now) is not None:
                    retrying = True
                    continue
                fired.setdefault(fwd.partition, []).append((fwd.due_key, fwd.job.version))
            self._queue_removals(fired)
        except Exception:
            # Whatever was not settled is forwarded again rather than left in flight.
            log.exception("settling %d forwards failed; they will be sent again", len(forwards))
            for fwd in forwards:
                state = self._state(fwd.partition)
                state.in_flight.pop(fwd.due_key, None)
                self._put_behind(state, fwd.due_key)
            retrying = True
        if retrying:
            self._wake.set()  # the loop plans its wake-up around the retry times

    async def _send_target(self, target: str, batch: list[_Forward]) -> None:
        """Enqueue one target's forwards in order; what is not enqueued in time has failed."""
        try:
            sent = self._send_in_order(target, batch)
            await asyncio.wait_for(sent, self.config.forward_timeout_s)
        except TimeoutError:
            for fwd in batch:
                if fwd.ack is None and fwd.error is None:
                    fwd.error = TimeoutError("the producer did not take the record in time")

    async def _send_in_order(self, target: str, batch: list[_Forward]) -> None:
        """Enqueue one target's forwards in record batches; a forward too large fails alone."""
        limit = self.config.max_forward_bytes
        sendable: list[_Forward] = []
        records: list[Record] = []
        for fwd in batch:
            job = fwd.job
            headers = job.forward_headers()
            size = job.forward_size(headers)
            if size > limit:
                fwd.error = ForwardFailed(
                    f"record of {size} bytes exceeds max_forward_bytes ({limit})"
                )
                continue
            sendable.append(fwd)
            records.append((job.forward_key, job.value, headers))
        if not records:
            return
        try:
            placed = await self.producer.send_many(target, None, records)
        except Exception as exc:  # sent again after the backoff (some may have gone: at-least-once)
            for fwd in sendable:
                fwd.error = exc
            return
        for fwd, (ack, _index) in zip(sendable, placed, strict=True):
            fwd.ack = ack

    async def _await_acks(self, forwards: list[_Forward]) -> None:
        """Wait for the broker's acks (one wait for all); a missing ack in time is a failure."""
        pending: dict[asyncio.Future[Any], list[_Forward]] = {}
        for fwd in forwards:
            if fwd.ack is not None:  # one ack per record batch: shared by its forwards
                pending.setdefault(_as_future(fwd.ack), []).append(fwd)
        if not pending:
            return
        done, late = await asyncio.wait(pending, timeout=self.config.forward_timeout_s)
        for fut in done:
            if not fut.cancelled() and fut.exception() is not None:
                for fwd in pending[fut]:
                    fwd.error = fut.exception()
        for fut in late:
            for fwd in pending[fut]:
                fwd.error = TimeoutError("no acknowledgement from the broker in time")

    async def _give_up(self, fwd: _Forward, now: int) -> int | None:
        """Handle a failed forward: the time of its retry, or None once dead-lettered."""
        state = self._state(fwd.partition)
        self.stats.forward_failures += 1
        attempts = state.attempts.get(fwd.due_key, 0) + 1
        reason = f"forward to {fwd.job.target!r} failed: {fwd.error!r}"
        # Retrying cannot help a record that is too large or a topic that is refused.
        retriable = bool(getattr(fwd.error, "retriable", True)) and not isinstance(
            fwd.error, ForwardFailed
        )
        if retriable and attempts < self.config.forward_attempts:
            state.attempts[fwd.due_key] = attempts
            backoff = min(self.config.forward_retry_backoff_ms << (attempts - 1), _MAX_BACKOFF_MS)
            state.retry_at[fwd.due_key] = now + backoff
            state.in_flight.pop(fwd.due_key, None)
            self._recheck(state, now + backoff)
            log.warning("%s (attempt %d, retry in %d ms)", reason, attempts, backoff)
            return now + backoff
        try:
            await self.dead_letter(
                fwd.job.job_id,
                fwd.job.value,
                fwd.job.contract_headers(),
                f"{reason} after {attempts} attempts",
            )
        except Exception as exc:  # the dead-letter topic failed too: keep the job, retry later
            log.error("dead-lettering job %r failed: %r", fwd.job.job_id, exc)
            state.retry_at[fwd.due_key] = now + self.config.forward_retry_backoff_ms
            state.in_flight.pop(fwd.due_key, None)
            self._recheck(state, now + self.config.forward_retry_backoff_ms)
            return now + self.config.forward_retry_backoff_ms
        # Dead-lettered: like a forwarded job, it stays in flight until its removal is applied.
        state.attempts.pop(fwd.due_key, None)
        state.retry_at.pop(fwd.due_key, None)
        return None

    async def send_dead_letter(
        self, key: bytes | None, value: bytes | None, headers: Sequence[Any], reason: str
    ) -> asyncio.Future[Any]:
        """Hand a record with ``delayq-error`` to the producer; counted once acknowledged."""
        ack = _as_future(
            await self.producer.send(
                self.config.dead_letter_topic,
                key,
                value,
                None,
                None,
                [*headers, (HEADER_ERROR, reason.encode())],
            )
        )

        def count(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                self.stats.dead_lettered_now(key, reason)

        ack.add_done_callback(count)
        return ack

    async def dead_letter(
        self, key: bytes | None, value: bytes | None, headers: Sequence[Any], reason: str
    ) -> None:
        """Write a record to the dead-letter topic and await the broker's ack."""
        ack = await self.send_dead_letter(key, value, headers, reason)
        await asyncio.wait_for(ack, self.config.forward_timeout_s)

    def _queue_removals(self, fired: dict[int, list[tuple[bytes, int]]]) -> None:
        for partition, entries in fired.items():
            self._removals.setdefault(partition, []).extend(entries)
        if self._removal_sender is None and self._removals:
            self._removal_sender = asyncio.ensure_future(self._send_removals())

    async def _send_removals(self) -> None:
        """After the linger, send the queued removals: one fired record per partition."""
        try:
            while self._removals:
                with contextlib.suppress(TimeoutError):
                    linger_s = self.config.removal_linger_ms / 1000
                    await asyncio.wait_for(self._removals_now.wait(), linger_s)
                removals, self._removals = self._removals, {}
                for partition, entries in removals.items():
                    step = self.config.fire_batch_max  # keeps each record well under 1 MB
                    for start in range(0, len(entries), step):
                        chunk = entries[start : start + step]
                        try:
                            await self._send_fired(partition, chunk)
                        except Exception as exc:
                            log.error("sending a removal record failed: %r", exc)
                            self._forget(partition, chunk)
        finally:
            self._removal_sender = None
            self._removals_now.clear()

    def _forget(self, partition: int, entries: Sequence[tuple[bytes, int]]) -> None:
        """Their removal record was lost: forward the jobs again rather than let them linger."""
        state = self._parts.get(partition)
        if state is None:
            return  # handed over: the next owner forwards them
        for key, _version in entries:
            state.in_flight.pop(key, None)
            self._put_behind(state, key)
        self._wake.set()

    async def _send_fired(self, partition: int, entries: list[tuple[bytes, int]]) -> None:
        ack = await self.producer.send(
            self.config.fired_topic, None, encode_fired(entries), partition, None, None
        )

        def forget_on_failure(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                self._forget(partition, entries)

        _as_future(ack).add_done_callback(forget_on_failure)

    # -- the loop's sleep --------------------------------------------------------------------

    async def yield_to_due_pass(self) -> None:
        """If a pass is due, let it run first (the agent calls this between commands).

        The agent applies a batch without awaiting anything real, so the loop would otherwise
        fire only after the whole batch: every job due meanwhile late by that much.
        """
        planned = self._planned_wake_ms
        if planned is None:  # a pass runs, or the loop is not sleeping
            return
        if not self._wake.is_set() and now_ms() < planned:
            return
        self._wake.set()
        for _ in range(_YIELDS_TO_PASS):
            await asyncio.sleep(0)
            if self._planned_wake_ms is None:  # the pass has begun (and collected its jobs)
                return

    async def sleep_until(self, wake_ms: int) -> None:
        """Sleep until ``wake_ms`` or until the agent schedules a job due earlier."""
        self._planned_wake_ms = wake_ms
        if self._wake.is_set():
            return
        delay = (wake_ms - now_ms()) / 1000
        if delay <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    @property
    def wake_requested(self) -> bool:
        """Whether the loop is asked to run a pass now instead of sleeping."""
        return self._wake.is_set()

    @property
    def next_wake_ms(self) -> int | None:
        """When the last pass planned to look again."""
        return self._next_wake_ms


def _waits_until(state: _PartitionState, key: bytes, now: int) -> int | None:
    """When the job at ``key`` may be sent: None if now, else the end of its flight or backoff."""
    flight = state.in_flight.get(key)
    if flight is not None and flight[1] > now:
        return flight[1]
    retry = state.retry_at.get(key)
    if retry is not None and retry > now:
        return retry
    return None


def _as_future(awaitable: Awaitable[Any]) -> asyncio.Future[Any]:
    return asyncio.ensure_future(awaitable)


def _new_fence() -> bytes:
    return FENCE_PREFIX + os.urandom(8).hex().encode()


def _fence_lost(state: _PartitionState, fence: bytes, fut: asyncio.Future[Any]) -> None:
    # The broker did not take the fence: send it again on the next pass.
    if state.fence == fence and (fut.cancelled() or fut.exception() is not None):
        state.fence_sent_ms = None
