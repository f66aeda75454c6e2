"""What the engine's steps share: settings, counters, per-partition state and the wake-up.

The engine (app/engine.py) is one object assembled from the steps of a job's path, each in its
own module over this shared state: app/ingest.py (commands into the table), app/firing.py (due
jobs to their targets), app/settling.py (acks, retries, dead letters, removal records),
app/handover.py (fences when partitions move) and app/pending.py (reads for the views).

One worker, one thread: the agent and the firing loop take turns on the event loop, so no
state here needs a lock; the wake-up below is how the agent tells the sleeping loop that
something earlier is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.jobs import FENCE_PREFIX, Fired, Job
from app.outcomes import Outcomes
from app.times import now_ms
from app.upstream.producer import Record, TimedRecord
from tables.keys import DUE_PREFIX, due_of
from tables.store import PartitionStore

__all__ = [
    "DeadLetter",
    "EngineConfig",
    "EngineState",
    "Forward",
    "PartitionState",
    "Producer",
    "Stats",
    "TimedRecord",
    "as_future",
    "new_fence",
    "recheck",
    "rescan_from",
    "waits_until",
]

#: Event-loop turns the agent yields at most for a due pass to begin (it takes three).
_YIELDS_TO_PASS = 8


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

        ``partition`` None: each record goes where its key hashes (app/upstream/producer.py).
        """
        ...

    async def send_record_batch(
        self, topic: str, partition: int, records: Sequence[TimedRecord]
    ) -> tuple[Awaitable[Any], int]:
        """Send the first of ``records`` (at least one) that fit in one record batch.

        The broker appends a record batch whole or not at all. Returns the batch's ack future
        and how many records it holds.
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
    #: False: jobs fire when due, whatever commands are on their way (app/guard.py).
    ingest_guard: bool = True


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
    #: Commands moved to their job's home partition, acknowledged (app/moving.py).
    moved: int = 0
    #: Moved commands that reached their home again (sent again after a crash): skipped.
    moves_skipped: int = 0
    #: Recurring jobs written again at their next occurrence after a forward (app/recurrence.py).
    rescheduled: int = 0
    #: Occurrences of recurring jobs not forwarded: missed, and a later one was due too.
    occurrences_skipped: int = 0
    #: End-offset probes of the ingest guard (app/guard.py).
    ingest_probes: int = 0
    #: Ingest commands read back because the stream had not delivered them to the guard.
    guard_read_back: int = 0
    lateness_ms: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))
    #: Moved commands applied at home: ms from their record's timestamp (app/moving.py).
    move_lag_ms: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))
    recent_dead_letters: deque[DeadLetter] = field(default_factory=lambda: deque(maxlen=100))

    def count_dead_letter(self, key: bytes | None, reason: str, at_ms: int) -> None:
        """Count a dead letter and remember it among the recent ones."""
        self.dead_lettered += 1
        self.recent_dead_letters.append(DeadLetter(at_ms, key, reason))


@dataclass(slots=True)
class PartitionState:
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
    fence: bytes | None = field(default_factory=lambda: new_fence())
    #: When the fence was sent; None until then (and after the broker refused it).
    fence_sent_ms: int | None = None
    #: Highest ingest offset applied by this process (the database's mark may lag behind it
    #: until the broker acknowledges the changelog: app.ingest.apply_batch, step 6). None: see
    #: the database.
    applied: int | None = None
    #: Jobs due at or before this may be sent: every ingest command the broker acknowledged
    #: before it is applied here (app/guard.py). 0: none yet (a new assignment probes first).
    safe_ms: int = 0
    #: An end-offset probe waiting for the agent: (taken at ms, end offset). At most one.
    probe: tuple[int, int] | None = None
    #: Job ids with a command acknowledged before ``safe_ms`` and not yet applied: their jobs
    #: wait until the agent has applied up to ``blocked_until`` (app/guard.py).
    blocked: frozenset[bytes] = frozenset()
    blocked_until: int = -1
    #: Commands written to other ingest partitions for jobs whose home this is, seen by the
    #: probe and not yet moved here: source partition -> {job id: offset}, in offset order.
    #: Their jobs wait like ``blocked`` ones (app/guard.py, "Commands on other partitions").
    inbound: dict[int, dict[bytes, int]] = field(default_factory=dict)
    #: Source partition -> highest offset of it whose move this process applied here (the
    #: database's copy may lag: app/moving.py, step 4). Absent: see the database.
    moved: dict[int, int] = field(default_factory=dict)
    #: Offsets of this partition's commands moved away and not acknowledged yet, and whether
    #: this state has moved again what an earlier owner may not have (app/moving.py, step 5).
    moving_out: set[int] = field(default_factory=set)
    moves_resumed: bool = False
    #: The last moved-out mark written or read (``tables.keys.MOVED_OUT_KEY``); whether it was
    #: read from the database yet.
    moved_out_mark: int | None = None
    moved_out_loaded: bool = False


@dataclass(slots=True)
class Forward:
    """One due job on its way to its target in a firing pass."""

    partition: int
    due_key: bytes
    job: Job
    ack: Awaitable[Any] | None = None
    error: BaseException | None = None


class EngineState:
    """The state the engine's steps share, the wake-up of the firing loop, and its sleep."""

    def __init__(
        self,
        store: PartitionStore,
        producer: Producer,
        config: EngineConfig,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.producer = producer
        self.config = config
        #: Epoch ms now (a fixed clock in tests); firing passes get ``now`` from their caller.
        self.clock = clock
        self.stats = Stats()
        #: Cancel outcomes and recent forwards, for ``DELETE /jobs/{id}?wait`` (app/outcomes.py).
        self.outcomes = Outcomes()
        self._parts: dict[int, PartitionState] = {}
        self._generation: int | None = None
        self._wake = asyncio.Event()
        #: When the loop plans to wake; None while a pass runs (any schedule then wakes it).
        self._planned_wake_ms: int | None = None
        self._next_wake_ms: int | None = None
        #: Held by a firing pass; :meth:`app.handover.Handover.quiesce` waits for it.
        self._pass_lock = asyncio.Lock()
        #: Passes whose forwards await their acks and removal records (app/settling.py).
        self._settling: set[asyncio.Task[None]] = set()
        self._unsettled = 0
        #: Acknowledged forwards whose removal record is not sent yet, by partition.
        self._removals: dict[int, list[Fired]] = {}
        self._removal_sender: asyncio.Task[None] | None = None
        self._removals_now = asyncio.Event()
        #: Dead letters of ingest records on their way (app/settling.py).
        self._dead_lettering: set[asyncio.Task[None]] = set()
        #: Commands on their way to their home partition, and their senders (app/moving.py).
        self._moves: dict[int, list[Any]] = {}
        self._movers: dict[int, asyncio.Future[None]] = {}
        #: Ingest partition -> the next offset the probe reads for commands to move here, and
        #: the home partitions it read them for (app/guard.py, "Commands on other partitions").
        self._inbound_cursor: dict[int, int] = {}
        self._inbound_homes: frozenset[int] = frozenset()
        #: Changes whenever partitions are revoked or assigned (app/guard.py, "Rebalances").
        self._assignment_epoch = 0
        #: Set by a pass that held due jobs back for the ingest guard (app/guard.py).
        self.probe_wanted = asyncio.Event()

    def _state(self, partition: int) -> PartitionState:
        state = self._parts.get(partition)
        if state is None:
            state = self._parts[partition] = PartitionState()
            # A new state knows of no command waiting on another partition: the next probe
            # reads them all again (app/guard.py, "Commands on other partitions").
            self._inbound_homes -= {partition}
        return state

    def fenced(self, partition: int) -> bool:
        """Whether the partition waits for its fence (not fired meanwhile; new ones do)."""
        return self._state(partition).fence is not None

    def _note_due(self, state: PartitionState, key: bytes) -> None:
        due_ms = due_of(key)
        if due_ms < state.watermark_ms:
            state.watermark_ms = due_ms
        self._put_behind(state, key)
        planned = self._planned_wake_ms
        if planned is None or due_ms < planned:
            self._wake.set()

    @staticmethod
    def _put_behind(state: PartitionState, key: bytes) -> None:
        """A job at ``key`` may be due and is not in flight: make sure a pass looks at it."""
        if key < state.cursor:
            state.behind.add(key)
        state.next_due_ms = min(state.next_due_ms, due_of(key))

    # -- the loop's sleep --------------------------------------------------------------------

    async def yield_to_due_pass(self) -> None:
        """If a pass is due, let it run first (the agent calls this between commands).

        The agent applies a batch without awaiting anything real, so the loop would otherwise
        fire only after the whole batch: every job due meanwhile late by that much.
        """
        planned = self._planned_wake_ms
        if planned is None:  # a pass runs, or the loop is not sleeping
            return
        if not self._wake.is_set() and self.clock() < planned:
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
        delay = (wake_ms - self.clock()) / 1000
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


def rescan_from(state: PartitionState, key: bytes) -> None:
    """Let the next scan walk from ``key`` (it finds the jobs behind the cursor too)."""
    state.cursor = min(state.cursor, key)
    state.behind = {k for k in state.behind if k < state.cursor}


def recheck(state: PartitionState, at_ms: int) -> None:
    """Make sure a pass looks behind the cursor again at ``at_ms`` (a retry, an ack timeout)."""
    if state.recheck_ms is None or at_ms < state.recheck_ms:
        state.recheck_ms = at_ms


def waits_until(state: PartitionState, key: bytes, now: int) -> int | None:
    """When the job at ``key`` may be sent: None if now, else the end of its flight or backoff."""
    flight = state.in_flight.get(key)
    if flight is not None and flight[1] > now:
        return flight[1]
    retry = state.retry_at.get(key)
    if retry is not None and retry > now:
        return retry
    return None


def as_future(awaitable: Awaitable[Any]) -> asyncio.Future[Any]:
    return asyncio.ensure_future(awaitable)


def new_fence() -> bytes:
    return FENCE_PREFIX + os.urandom(8).hex().encode()
