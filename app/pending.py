"""Reads of the pending jobs for the views (API, dashboard): never a table write."""

from __future__ import annotations

import itertools
from collections.abc import Collection

from app.engine_state import EngineState
from app.jobs import Job, JobStatus, decode_job
from tables.keys import (
    DUE_END,
    ID_END,
    ID_PREFIX,
    decode_due_ms,
    due_key,
    due_of,
    due_prefix,
    id_key,
)

__all__ = ["PendingReads"]


class PendingReads(EngineState):
    """What is pending, how much, and when: bounded reads for the views."""

    def get(self, partition: int, job_id: bytes) -> Job | None:
        """The pending job ``job_id`` in ``partition``, or None."""
        index = self.store.get(partition, id_key(job_id))
        if index is None:
            return None
        raw = self.store.get(partition, due_key(decode_due_ms(index), job_id))
        return None if raw is None else decode_job(raw)

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
