"""Firing: due jobs from the table to their target topics (dramatiq's order: forward first).

A firing pass over the active partitions (the loop in app/timers.py calls :meth:`fire_due` with
the clock, then sleeps until :attr:`next_wake_ms` or until the agent schedules something
earlier):

1. Scan each partition's due keys from its cursor up to ``now`` (behind the cursor every live
   job is in flight or waits for a retry; see :class:`app.engine_state.PartitionState`), and look
   up the jobs written behind the cursor since.
2. Send every due job to its target topic, in due order, and mark it in flight (skipped by later
   scans); a target that stalls delays only its own jobs.
3. Settle in the background (app/settling.py): acks, retries, dead letters, removal records.

A crash between 2 and the removal forwards the job again (same ``delayq-job-id``):
at-least-once, never lost. Removal through the fired topic means only the partition's current
owner ever writes it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence

from app.engine_state import Forward, PartitionState, recheck, rescan_from, waits_until
from app.errors import ForwardFailed
from app.guard import IngestGuard
from app.jobs import Job, decode_job
from app.settling import Settling
from app.times import MAX_DUE_MS
from app.upstream.producer import Record
from tables.keys import DUE_END, due_of, due_prefix, split_due_key

__all__ = ["Firing"]

#: Beyond this many jobs written behind a partition's cursor, a pass walks from the earliest.
_BEHIND_MAX = 1_000


class Firing(Settling, IngestGuard):
    """The firing pass: scan what is due, send it, hand the acks to :class:`Settling`."""

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
            forwards: list[Forward] = []
            for partition in active:
                if self.fenced(partition):
                    continue
                batch, partition_wake = self._collect_due(partition, now)
                forwards.extend(batch)
                if self.holds_back(self._state(partition), now):
                    self.probe_wanted.set()  # a probe frees them (app/guard.py)
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

    def _collect_due(self, partition: int, now: int) -> tuple[list[Forward], int]:
        """Due jobs of one partition (earliest first) and when it next needs a look.

        Due means due at or before the guard's limit (app/guard.py), which is ``now`` when every
        command acknowledged until ``now`` is applied.
        """
        state = self._state(partition)
        limit = self.due_limit(partition, now)
        idle_wake = now + self.config.max_idle_ms
        recheck_ms = state.recheck_ms
        if recheck_ms is not None and recheck_ms <= now:
            # A retry or an ack timeout behind the cursor has come: walk from the front again.
            state.recheck_ms = None
            rescan_from(state, due_prefix(state.watermark_ms))
        elif state.next_due_ms > limit:
            return [], min(self._due_wake(state, now, idle_wake), recheck_ms or idle_wake)
        if len(state.behind) > _BEHIND_MAX:  # one walk costs less than so many lookups
            rescan_from(state, min(state.behind))
        batch: list[Forward] = []
        if state.behind:
            self._collect_behind(partition, state, now, limit, batch)
        from_front = state.cursor <= due_prefix(state.watermark_ms)
        first_due = self._scan_due(partition, state, now, limit, batch)
        if state.behind:
            # Jobs blocked by the guard wake nobody: unblocking them does (app/guard.py).
            waiting = [due_of(k) for k in state.behind if not _blocked_key_of(state, k)]
            state.next_due_ms = min([state.next_due_ms, *waiting])
        if from_front:
            front = now if first_due is None else first_due
            state.watermark_ms = min([front, *(due_of(key) for key in state.behind)])
        elif not state.in_flight and not state.retry_at and not state.behind:
            state.watermark_ms = due_of(state.cursor) if len(state.cursor) > 1 else 0
        if len(batch) >= self.config.fire_batch_max:
            return batch, now
        return batch, min(self._due_wake(state, now, idle_wake), state.recheck_ms or idle_wake)

    def _due_wake(self, state: PartitionState, now: int, idle_wake: int) -> int:
        """When the partition's next due job needs a pass (held ones: when the guard wakes it)."""
        if self.holds_back(state, now):
            return idle_wake
        return min(idle_wake, state.next_due_ms)

    def _scan_due(
        self, partition: int, state: PartitionState, now: int, limit: int, batch: list[Forward]
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
                if due_ms > limit:
                    cursor = key
                    state.next_due_ms = due_ms
                    break
                cursor = key + b"\0"
                not_before = waits_until(state, key, now)
                if _blocked_key_of(state, key):
                    state.behind.add(key)  # its own command is on its way: looked up again
                elif not_before is None:
                    batch.append(Forward(partition, key, self._due_job(raw, limit)))
                else:
                    recheck(state, not_before)
            else:  # nothing after the cursor: only a write (which lowers this) makes work
                state.next_due_ms = MAX_DUE_MS
        finally:
            scan.close()
        state.cursor = cursor
        return first_due

    def _collect_behind(
        self, partition: int, state: PartitionState, now: int, limit: int, batch: list[Forward]
    ) -> None:
        """Add the due jobs among those written behind the cursor to ``batch``."""
        keep: set[bytes] = set()
        for key in sorted(state.behind):
            if due_of(key) > limit or len(batch) >= self.config.fire_batch_max:
                keep.add(key)
                continue
            if _blocked_key_of(state, key):
                keep.add(key)  # its own command is on its way (app/guard.py)
                continue
            raw = self.store.get(partition, key)
            if raw is None:
                continue  # cancelled, replaced or removed since
            if waits_until(state, key, now) is None:  # else a recheck covers it
                batch.append(Forward(partition, key, self._due_job(raw, limit)))
        state.behind = keep

    def _due_job(self, raw: bytes, limit: int) -> Job:
        """The job a due key sends: a recurring job that missed occurrences sends only the
        latest one due by ``limit`` (app/recurrence.py); the ones before it are skipped."""
        job = decode_job(raw)
        if job.rule is not None:
            latest, skipped = job.rule.latest(job.due_ms, limit)
            if skipped:
                self.stats.occurrences_skipped += skipped
                job = job.at(latest)
        return job

    async def _send(self, forwards: list[Forward], now: int) -> None:
        """Mark the forwards in flight and hand them to the producer, each target in due order."""
        expires = now + self.config.ack_timeout_ms
        by_target: dict[str, list[Forward]] = {}
        for fwd in forwards:
            state = self._state(fwd.partition)
            state.in_flight[fwd.due_key] = (fwd.job.version, expires)
            recheck(state, expires)
            by_target.setdefault(fwd.job.target, []).append(fwd)
        # One sender per target: a target that stalls (e.g. waiting for metadata of a missing
        # topic) delays only its own jobs, and each target still gets its jobs in due order.
        await asyncio.gather(*(self._send_target(t, batch) for t, batch in by_target.items()))

    async def _send_target(self, target: str, batch: list[Forward]) -> None:
        """Enqueue one target's forwards in order; what is not enqueued in time has failed."""
        try:
            sent = self._send_in_order(target, batch)
            await asyncio.wait_for(sent, self.config.forward_timeout_s)
        except TimeoutError:
            for fwd in batch:
                if fwd.ack is None and fwd.error is None:
                    fwd.error = TimeoutError("the producer did not take the record in time")

    async def _send_in_order(self, target: str, batch: list[Forward]) -> None:
        """Enqueue one target's forwards in record batches; a forward too large fails alone."""
        limit = self.config.max_forward_bytes
        sendable: list[Forward] = []
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


def _blocked_key_of(state: PartitionState, key: bytes) -> bool:
    if not state.blocked and not state.inbound:
        return False
    job_id = split_due_key(key)[1]
    return job_id in state.blocked or any(job_id in ids for ids in state.inbound.values())
