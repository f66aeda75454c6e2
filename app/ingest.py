"""Ingest: commands from the ingest topic (and removals from the fired topic) into the table.

The agent (app/agents.py) hands each batch of records to :func:`apply_batch`, which applies
them through the engine's :class:`TableWrites`: the only table writes, so every write happens
inside an event and goes to that event's partition. Its collaborators come in an
:class:`IngestContext`, so that a unit test drives it with a stub producer and a fixed clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.commands import Cancel, parse_command
from app.errors import InvalidRecord
from app.guard import IngestGuard
from app.jobs import (
    FENCE_PREFIX,
    Fired,
    Header,
    Job,
    decode_fired,
    decode_job,
    encode_job,
    is_recurring,
    job_version,
)
from app.moving import (
    PARTITIONER_PATTERNS,
    encode_moved_from,
    home_partition,
    parse_moved_from,
    producer_partitioner,
)
from app.names import HEADER_CRON, HEADER_DELAY_MS, HEADER_EVERY_MS, HEADER_MOVED_FROM
from app.outcomes import CancelOutcome
from app.times import now_ms
from tables.keys import (
    APPLIED_KEY,
    decode_due_ms,
    due_key,
    encode_due_ms,
    id_key,
    moved_key,
    split_due_key,
)

if TYPE_CHECKING:
    from app.engine import Engine

__all__ = [
    "IngestContext",
    "TableWrites",
    "apply_batch",
    "delay_base_ms",
    "message_headers",
    "no_release",
]

log = logging.getLogger(__name__)

#: Headers whose command counts from the record's timestamp (``delay_base_ms``).
_FROM_TIMESTAMP = frozenset({HEADER_DELAY_MS, HEADER_CRON, HEADER_EVERY_MS})

#: Commands applied between two looks at whether a pass is due (each takes ~0.1-0.3 ms).
_YIELD_EVERY = 16


class TableWrites(IngestGuard):
    """Schedule, replace, cancel and remove jobs: the engine's only table writes."""

    def mark_applied(self, partition: int, offset: int) -> None:
        """Record that the commands up to ``offset`` are applied (changelogged with them).

        Steps 3 and 6 of :func:`apply_batch`: the local database gets the mark only once the
        broker acknowledged it; until then this process goes by its own record of the mark.
        """
        self.note_applied(partition, offset)
        self.store.tag = offset
        self.store.put_once_acked(partition, APPLIED_KEY, encode_due_ms(offset))

    def mark_moved(self, partition: int, source: int, offset: int) -> None:
        """Record that the moves from ``source`` up to ``offset`` are applied (step 4 of
        app/moving.py), changelogged and written locally like :meth:`mark_applied`."""
        self._state(partition).moved[source] = offset
        self.store.put_once_acked(partition, moved_key(source), encode_due_ms(offset))
        self.moved_in(partition, source, offset)

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

    def cancel(self, partition: int, job_id: bytes) -> CancelOutcome:
        """Remove the pending job ``job_id``; what that found (app/outcomes.py).

        ``too_late`` for a job sent and awaiting its acknowledgement: it is removed too, but its
        forward may well arrive.
        """
        index = self.store.read(partition, id_key(job_id))
        if index is None:
            self.stats.cancel_unknown += 1
            return self.outcomes.not_pending(job_id)
        due_ms = decode_due_ms(index)
        key = due_key(due_ms, job_id)
        flight = self._state(partition).in_flight.get(key)
        self.store.delete(partition, key)
        self.store.delete_local(partition, id_key(job_id))
        self._uncount(partition)
        self.stats.cancelled += 1
        if flight is not None:  # its expiry is its send time plus the ack timeout
            return CancelOutcome("too_late", due_ms, flight[1] - self.config.ack_timeout_ms)
        return CancelOutcome("cancelled", due_ms)

    async def flush(self) -> None:
        """Send the changelog records of the commands applied so far (the agent calls it)."""
        await self.store.flush_changelog()

    def remove_fired(self, partition: int, entries: Sequence[Fired]) -> None:
        """Delete forwarded jobs, each only if still the version that was forwarded; write a
        recurring job again at its next occurrence instead (app/recurrence.py)."""
        state = self._state(partition)
        for key, version, occurrence_ms in entries:
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
            if is_recurring(raw) and self._reschedule(partition, decode_job(raw), occurrence_ms):
                continue
            if self.store.read(partition, id_key(job_id)) == encode_due_ms(due_ms):
                self.store.delete_local(partition, id_key(job_id))
            self._uncount(partition)
            self.stats.removed += 1

    def _reschedule(self, partition: int, job: Job, occurrence_ms: int) -> bool:
        """Write a recurring job at the occurrence after the one forwarded; False if it ended.

        The same step as a one-shot job's removal, so a crash re-forwards the occurrence (same
        de-duplication pair) or has written the next one: never both lost.
        """
        following = job.rule.after(occurrence_ms) if job.rule is not None else None
        if following is None:
            return False
        state = self._state(partition)
        new_key = due_key(following, job.job_id)
        self.store.put(partition, new_key, encode_job(job.at(following)))
        self.store.put_local(partition, id_key(job.job_id), encode_due_ms(following))
        self.stats.rescheduled += 1
        self._note_due(state, new_key)
        return True

    def _uncount(self, partition: int) -> None:
        state = self._state(partition)
        if state.pending is not None:
            state.pending -= 1


@dataclass(frozen=True, slots=True)
class IngestContext:
    """What applying a batch works with (the worker's are wired in app/agents.py)."""

    engine: Engine
    ingest_topic: str
    fired_topic: str
    #: Topics a job may not target (``Settings.internal_topics``).
    forbidden_targets: frozenset[str]
    max_clock_skew_ms: int
    #: The ingest partitions this worker owns as active now.
    owned_partitions: Callable[[], Collection[int]]
    #: ``(partition, start, stop)`` -> the ingest records at ``start <= offset < stop``.
    read_skipped: Callable[[int, int, int], Awaitable[Sequence[Any]]]
    #: ``(partition, start, last)``: tell the consumer these offsets are handled (app/gaps.py).
    acknowledge_skipped: Callable[[int, int, int], Awaitable[None]]
    #: Keep the consumer from committing past a delivered record until the returned callable
    #: is called (the worker: one more reference on Faust's message).
    hold: Callable[[Any], Callable[[], None]] = lambda _message: no_release
    #: ``(partition, offset)``: keep the consumer from committing at or past ``offset`` until
    #: the returned callable is called (for read-back ranges, which Faust may count as done).
    hold_offset: Callable[[int, int], Callable[[], None]] = lambda _p, _o: no_release
    clock: Callable[[], int] = now_ms
    #: The ingest topic's partition count, which decides each job's home partition
    #: (app/moving.py). 0: every command is applied where it lands (tests of one partition).
    partitions: int = 0


def no_release() -> None:
    """A hold that holds nothing (records the consumer does not track)."""


def _record_ms(timestamp_s: float | None) -> int | None:
    """A record's timestamp in epoch ms; None when it has none."""
    return round(timestamp_s * 1000) if timestamp_s and timestamp_s > 0 else None


def delay_base_ms(ctx: IngestContext, timestamp_s: float | None) -> int:
    """What ``delayq-delay-ms`` counts from: the record's timestamp, within reason.

    A timestamp more than ``max_clock_skew_ms`` ahead of this worker's clock cannot be true (the
    producer's clock is ahead): the receipt time is used instead, and counted. An old timestamp
    is taken as it is: a backlog after downtime is old too, and its delays have run.
    """
    received = ctx.clock()
    timestamp_ms = _record_ms(timestamp_s)
    if timestamp_ms is None:
        return received
    if timestamp_ms - received > ctx.max_clock_skew_ms:
        ctx.engine.stats.clock_skew_corrected += 1
        return received
    return timestamp_ms


def _received_ms(timestamp_s: float | None, now: int) -> int:
    """When delayq received a command: its record's timestamp, never later than ``now``.

    The record's timestamp, not the moment it is applied: the time a command waits in the
    ingest topic (a backlog, a restart) is delayq's own delay, and lateness must show it.
    """
    timestamp_ms = _record_ms(timestamp_s)
    return now if timestamp_ms is None else min(timestamp_ms, now)


def message_headers(message: Any) -> list[Header]:
    """A record's headers as delayq reads them (names as str)."""
    return [(str(name), value) for name, value in (message.headers or ())]


class _Batch:
    """What applying one batch of commands does besides table writes.

    The replay mark is written once per partition per batch (not per command), and dead
    letters are acknowledged before it, so a command at or below the mark is fully handled.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        #: partition -> highest ingest offset handled (read from the table once per batch)
        self._applied: dict[int, int] = {}
        self._marked: set[int] = set()
        #: Partitions whose earlier owner's unacknowledged moves this batch has looked at.
        self.resumed: set[int] = set()
        #: (home partition, source partition) -> highest source offset moved there and applied
        self._moved: dict[tuple[int, int], int] = {}
        #: partition -> (first, last, count) of the replayed commands skipped
        self._replays: dict[int, tuple[int, int, int]] = {}
        #: (home partition, source partition) -> (first, last, count) of the moves skipped
        self._moves_skipped: dict[tuple[int, int], tuple[int, int, int]] = {}
        #: Records that break the contract, with the reason: dead-lettered after the batch.
        self.dead_letters: list[tuple[Any, str, Callable[[], None] | None]] = []

    def last_applied(self, partition: int) -> int:
        applied = self._applied.get(partition)
        if applied is None:
            applied = self._applied[partition] = self._engine.applied_offset(partition)
        return applied

    def applied(self, partition: int, offset: int) -> None:
        self._applied[partition] = offset
        self._marked.add(partition)

    def first_move(self, partition: int, source: int, offset: int) -> bool:
        """Whether a move from ``source`` @ ``offset`` is new here; if so, it is noted."""
        where = (partition, source)
        last = self._moved.get(where)
        if last is None:
            last = self._engine.moved_offset(partition, source)
        if offset <= last:
            first, _last, count = self._moves_skipped.get(where, (offset, offset, 0))
            self._moves_skipped[where] = (first, offset, count + 1)
            return False
        self._moved[where] = offset
        return True

    def replayed(self, partition: int, offset: int) -> None:
        first, _last, count = self._replays.get(partition, (offset, offset, 0))
        self._replays[partition] = (first, offset, count + 1)

    def finish(self) -> None:
        """Write the replay marks; log the replays skipped."""
        for (partition, source), offset in self._moved.items():
            # Tagged with the home partition's own offset, as its other records (the tag left
            # by the batch's last command may be another partition's: a replay of this one
            # would take the records after the mark for a late writer's and skip them).
            self._engine.store.tag = self.last_applied(partition)
            self._engine.mark_moved(partition, source, offset)
        for partition in self._marked:
            applied = self._applied[partition]
            self._engine.store.tag = applied
            self._engine.mark_moved_out(
                partition, self._engine.moves_unacked_from(partition, applied)
            )
            self._engine.mark_applied(partition, applied)
        for partition, (first, last, count) in self._replays.items():
            log.info(
                "ingest partition %d: %d commands at offsets %d-%d were applied before, skipped",
                partition,
                count,
                first,
                last,
            )
        for (partition, source), (first, last, count) in self._moves_skipped.items():
            log.info(
                "ingest partition %d: %d commands moved from partition %d (its offsets %d-%d) "
                "were applied before, skipped",
                partition,
                count,
                source,
                first,
                last,
            )


async def apply_batch(ctx: IngestContext, messages: Sequence[Any]) -> None:
    """Apply ingest commands and removals in order, then hand their changelog to the producer.

    The durability order of a command, written here only (tables/store.py, tables/rebuild.py
    and :meth:`TableWrites.mark_applied` point here):

    1. every command and removal is written to its partition's local database (due key and id
       index: :class:`TableWrites`);
    2. the batch's dead letters go to the producer in the background, each holding its
       record's ingest offset: the consumer commits nothing past a record whose dead letter
       the broker has not acknowledged (a record delivered again after a crash is skipped as a
       replay, but dead-lettered again if it breaks the contract);
    3. the replay mark (highest handled ingest offset) of each partition is recorded, to be
       changelogged after the commands' own records (:meth:`TableWrites.mark_applied`); from
       here the firing pass counts the batch's commands as applied (app/guard.py);
    4. the changelog records of 1 and 3 go to the producer, each partition's in write order
       (:meth:`tables.store.PartitionStore.flush_changelog`);
    5. this returns; Faust acks the events; its commit timer flushes the producer (so the
       changelog holds 1 and 3) and only then commits the ingest offsets, up to the first
       record still held by 2;
    6. each partition's changelog ack records the changelog offset in the local database
       (Faust's persisted offset: a restart with this data directory replays only what came
       after) and writes the replay mark of 3 locally, never before: a worker killed before the
       ack keeps its old mark, so it applies the commands again when Faust delivers them again
       and the changelog gets them then; a mark written locally first would skip them, while
       the changelog (a standby, a restore) never got their changes.

    If the producer gives up on a changelog record, step 5 must not commit: tables/rebuild.py.
    """
    engine = ctx.engine
    batch = _Batch(engine)
    owned = set(ctx.owned_partitions())
    for index, message in enumerate(messages):
        if index % _YIELD_EVERY == _YIELD_EVERY - 1:
            await engine.yield_to_due_pass()
        if message.partition not in owned:
            # Read before this worker lost the partition: its new owner applies it. Writing
            # it here would reopen the partition's database and write its changelog.
            engine.stats.not_owned_skipped += 1
            continue
        if message.topic == ctx.fired_topic:
            # A removal's records carry the partition's applied offset (tables/store.py fresh).
            engine.store.tag = batch.last_applied(message.partition)
            if message.key is not None and message.key.startswith(FENCE_PREFIX):
                engine.fence_passed(message.partition, message.key)
            else:
                engine.remove_fired(message.partition, decode_fired(message.value or b""))
        else:
            await _apply_ingest(ctx, message, batch)
    for message, reason, release in batch.dead_letters:
        engine.dead_letter_in_background(
            message.key,
            message.value,
            message_headers(message),
            reason,
            release or ctx.hold(message),
        )
    batch.finish()
    await engine.yield_to_due_pass()
    await engine.flush()


async def _apply_ingest(ctx: IngestContext, message: Any, batch: _Batch) -> None:
    """Apply one delivered ingest record: skip a replay, read back what the stream skipped."""
    if message.partition not in batch.resumed:  # once per partition and batch, not per record
        batch.resumed.add(message.partition)
        await _resume_moves(ctx, message.partition, batch)
    last = batch.last_applied(message.partition)
    if message.offset <= last:  # delivered again after a crash: applied before
        ctx.engine.stats.replays_skipped += 1
        batch.replayed(message.partition, message.offset)
        # Its dead letter or move may not have been acknowledged before the crash: again.
        headers = message_headers(message)
        parsed = _parse(ctx, message, headers, ctx.clock())
        if isinstance(parsed, InvalidRecord):
            batch.dead_letters.append((message, parsed.reason, None))
        else:
            _move_if_away(ctx, message, headers, parsed.job_id, None)
        return
    if last >= 0 and message.offset > last + 1:
        await _apply_skipped(ctx, message.partition, last + 1, message.offset, batch)
    _apply_command(ctx, message, batch)


def _parse(ctx: IngestContext, message: Any, headers: list[Header], now: int) -> Any:
    """The command a record holds, or the :class:`InvalidRecord` error saying why it is none."""
    # Only a delay, or a recurring job's first occurrence, counts from the record's timestamp
    # (and only then is skew corrected).
    uses_delay = any(name in _FROM_TIMESTAMP for name, _value in headers)
    timestamp_ms = delay_base_ms(ctx, message.timestamp) if uses_delay else now
    try:
        return parse_command(
            message.key,
            message.value,
            headers,
            timestamp_ms=timestamp_ms,
            version=message.offset,
            forbidden_targets=ctx.forbidden_targets,
        )
    except InvalidRecord as exc:
        return exc


def _apply_command(
    ctx: IngestContext, message: Any, batch: _Batch, gap: _GapRelease | None = None
) -> None:
    """Schedule, replace or cancel as the record says, or dead-letter it with the reason.

    ``gap``: the read-back range ``message`` is in; its dead letter holds the range's
    acknowledgement (a delivered record's holds its own offset: ``ctx.hold``).
    """
    engine = ctx.engine
    now = ctx.clock()
    engine.store.tag = message.offset  # what this command writes carries its offset
    headers = message_headers(message)
    parsed = _parse(ctx, message, headers, now)
    if isinstance(parsed, InvalidRecord):
        log.warning(
            "dead-lettering %s[%d]@%d: %s",
            message.topic,
            message.partition,
            message.offset,
            parsed.reason,
        )
        batch.dead_letters.append((message, parsed.reason, gap.hold() if gap else None))
    elif not _applies_here(ctx, message, headers, parsed.job_id, batch, gap):
        pass  # moved to its home partition, or a move applied before
    elif isinstance(parsed, Cancel):
        outcome = engine.cancel(message.partition, parsed.job_id)
        engine.outcomes.record(message.partition, message.offset, outcome)
    else:
        engine.schedule(message.partition, parsed, _received_ms(message.timestamp, now))
    batch.applied(message.partition, message.offset)


def _applies_here(
    ctx: IngestContext,
    message: Any,
    headers: list[Header],
    job_id: bytes,
    batch: _Batch,
    gap: _GapRelease | None,
) -> bool:
    """Whether a valid command is for this partition: not one to move, nor a move seen before."""
    moved_from = parse_moved_from(headers)
    if moved_from is not None and not _from_a_worker(ctx, message.partition, job_id, moved_from):
        # A producer's (or a mirror's) header, not a move: the command counts as written here.
        headers = [(name, value) for name, value in headers if name != HEADER_MOVED_FROM]
        moved_from = None
    if moved_from is None:
        return not _move_if_away(ctx, message, headers, job_id, gap)
    source, offset = moved_from
    if not batch.first_move(message.partition, source, offset):
        ctx.engine.stats.moves_skipped += 1
        return False
    timestamp_ms = _record_ms(message.timestamp)
    if timestamp_ms is not None:
        ctx.engine.stats.move_lag_ms.append(max(0, ctx.clock() - timestamp_ms))
    return True


def _from_a_worker(
    ctx: IngestContext, partition: int, job_id: bytes, moved_from: tuple[int, int]
) -> bool:
    """Whether a record's :data:`HEADER_MOVED_FROM` can be a worker's move: a worker moves a
    command only to its job's home, and only from another partition of the topic."""
    if not ctx.partitions:
        return True  # no moves in this configuration: nothing to tell them by
    source, _offset = moved_from
    home = home_partition(job_id, ctx.partitions)
    return home == partition and source != partition and source < ctx.partitions


async def _resume_moves(ctx: IngestContext, partition: int, batch: _Batch) -> None:
    """Once per assignment: move again the commands an earlier owner may not have moved
    (app/moving.py, step 5), read back from the moved-out mark to the replay mark."""
    state = ctx.engine._state(partition)
    if state.moves_resumed or not ctx.partitions:
        return
    state.moves_resumed = True
    start = ctx.engine.moved_out_mark(partition)
    applied = batch.last_applied(partition)
    if start is None or start > applied:
        return
    records = await ctx.read_skipped(partition, start, applied + 1)
    for record in records:
        headers = message_headers(record)
        parsed = _parse(ctx, record, headers, ctx.clock())
        if not isinstance(parsed, InvalidRecord):
            _move_if_away(ctx, record, headers, parsed.job_id, None)
    log.info(
        "ingest partition %d: moved again what offsets %d-%d held, in case the previous owner "
        "had not (%d commands read back)",
        partition,
        start,
        applied,
        len(records),
    )


def _move_if_away(
    ctx: IngestContext,
    message: Any,
    headers: list[Header],
    job_id: bytes,
    gap: _GapRelease | None,
) -> bool:
    """Move a command that landed off its job's home partition there (app/moving.py, step 1).

    False if the command is home. A worker's moves are always home: a
    :data:`HEADER_MOVED_FROM` on a command elsewhere is not one, and is replaced.
    """
    if not ctx.partitions:
        return False
    home = home_partition(job_id, ctx.partitions)
    if home == message.partition:
        return False
    _note_partitioner(ctx, job_id, message.partition)
    moved = [(n, v) for n, v in headers if n != HEADER_MOVED_FROM]
    moved.append((HEADER_MOVED_FROM, encode_moved_from(message.partition, message.offset)))
    record = (message.key, message.value, moved, _record_ms(message.timestamp))
    release = gap.hold() if gap is not None else ctx.hold(message)
    release = ctx.engine.track_move_out(message.partition, message.offset, release)
    ctx.engine.move_in_background(ctx.ingest_topic, home, record, release)
    return True


#: Producer partitioners already logged by this process (one line each).
_partitioners_logged: set[str] = set()


def _note_partitioner(ctx: IngestContext, job_id: bytes, partition: int) -> None:
    if len(_partitioners_logged) == PARTITIONER_PATTERNS:  # all logged: no hashing per move
        return
    pattern = producer_partitioner(job_id, partition, ctx.partitions)
    if pattern in _partitioners_logged:
        return
    _partitioners_logged.add(pattern)
    log.info(
        "ingest partition %d: commands partitioned %s are moved to their job's home partition "
        "(murmur2 of the job id); producers that partition by murmur2 save that hop "
        "(README, 'Producing from any client')",
        partition,
        pattern,
    )


async def _apply_skipped(
    ctx: IngestContext, partition: int, start: int, stop: int, batch: _Batch
) -> None:
    """Apply the commands at ``start <= offset < stop`` that Faust did not deliver (app/gaps.py)."""
    skipped = await ctx.read_skipped(partition, start, stop)
    log.warning(
        "ingest partition %d: offsets %d-%d were not delivered; read back %d commands",
        partition,
        start,
        stop - 1,
        len(skipped),
    )
    ctx.engine.stats.gaps_read_back += len(skipped)
    # Faust never saw these offsets acknowledged and would not commit past them: tell it, once
    # the range's dead letters (if any) are acknowledged.
    gap = _GapRelease(ctx, partition, start, stop - 1)
    for record in skipped:
        _apply_command(ctx, record, batch, gap)
    batch.applied(partition, stop - 1)
    if gap.unheld():
        await ctx.acknowledge_skipped(partition, start, stop - 1)


class _GapRelease:
    """Acknowledges a read-back range to the consumer once its last hold is released."""

    def __init__(self, ctx: IngestContext, partition: int, start: int, last: int) -> None:
        self._ctx = ctx
        self._range = (partition, start, last)
        self._holds = 0
        #: Faust counts offsets it skipped as done (its gap list): commits must stop at the
        #: range too, while a move or dead letter of it is unacknowledged.
        self._unhold = no_release

    def hold(self) -> Callable[[], None]:
        if self._holds == 0:
            partition, start, _last = self._range
            self._unhold = self._ctx.hold_offset(partition, start)
        self._holds += 1
        return self._release

    def unheld(self) -> bool:
        """Whether no dead letter holds the range (then the caller acknowledges it at once)."""
        return self._holds == 0

    def _release(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self._unhold()
            task = asyncio.ensure_future(self._ctx.acknowledge_skipped(*self._range))
            _background.add(task)
            task.add_done_callback(_background.discard)


#: Tasks nobody awaits, referenced until done.
_background: set[asyncio.Future[Any]] = set()
