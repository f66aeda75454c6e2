"""The load generator: plans of jobs, and one batching aiokafka producer that sends them on time.

A :class:`Job` is a schedule at ``sched_ms`` of a record due at ``due_ms`` (both epoch ms).
Each contender turns a job into the record it needs (``Contender.record``) and says when to
send it (``Contender.emit_ms``: delayq and seed at the schedule time, limit at the due time).
:meth:`Generator.paced` sends in 10 ms slices: every slice, everything whose send time has come.
The producer batches (``linger_ms``) and never waits for one acknowledgement before the next
send; acknowledgements are checked as they complete. Job ids (record keys) are unique per run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from app.times import now_ms

__all__ = [
    "Generator",
    "Job",
    "LoadStats",
    "Record",
    "burst_plan",
    "spread_plan",
]

SLICE_S = 0.010
VALUE = b"v" * 100  # the payload of every job: 100 bytes


@dataclass(frozen=True, slots=True)
class Job:
    key: bytes
    sched_ms: int
    due_ms: int


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: bytes
    headers: list[tuple[str, bytes]]
    value: bytes = VALUE
    timestamp_ms: int | None = None
    partition: int | None = None


@dataclass(slots=True)
class LoadStats:
    sent: int = 0
    errors: int = 0
    #: How far behind its planned send time the latest send was, at worst (ms).
    max_lag_ms: int = 0
    first_ms: int = 0
    last_ms: int = 0

    @property
    def rate(self) -> float:
        """Achieved send rate (records/s) between the first and the last send."""
        span = (self.last_ms - self.first_ms) / 1000
        return self.sent / span if span > 0 else float(self.sent)


def spread_plan(
    tag: str, start_ms: int, rate: float, duration_s: float, delay_ms: tuple[int, int], seed: int
) -> list[Job]:
    """``rate`` schedules a second for ``duration_s``, evenly spaced, delays uniform in range."""
    rng = random.Random(seed)
    count = round(rate * duration_s)
    lo, hi = delay_ms
    jobs = []
    for i in range(count):
        sched = start_ms + round(i * 1000 / rate)
        jobs.append(Job(f"{tag}-{i:08d}".encode(), sched, sched + rng.randint(lo, hi)))
    return jobs


def burst_plan(tag: str, count: int, due_ms: int, lead_ms: int = 10_000) -> list[Job]:
    """``count`` jobs all due at ``due_ms`` (scheduled ``lead_ms`` before it)."""
    return [Job(f"{tag}-{i:08d}".encode(), due_ms - lead_ms, due_ms) for i in range(count)]


class Generator:
    """One producer for the whole run (acks=all, batched)."""

    def __init__(self, bootstrap: str, linger_ms: int = 5) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=60_000,
        )

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def _send(self, record: Record) -> asyncio.Future[object]:
        fut: asyncio.Future[object] = await self.producer.send(
            record.topic,
            record.value,
            key=record.key,
            headers=record.headers,
            timestamp_ms=record.timestamp_ms,
            partition=record.partition,
        )
        return fut

    async def paced(
        self,
        jobs: Sequence[Job],
        emit_ms: Callable[[Job], int],
        record: Callable[[Job, int], Record],
        progress: Callable[[LoadStats], None] | None = None,
    ) -> LoadStats:
        """Send each job at ``emit_ms(job)`` (10 ms slices); ``record(job, now_ms)`` builds it."""
        order = sorted(jobs, key=emit_ms)
        stats = LoadStats()
        acks: deque[asyncio.Future[object]] = deque()
        i, n = 0, len(order)
        next_report = time.monotonic() + 2
        while i < n:
            now = now_ms()
            while i < n and emit_ms(order[i]) <= now:
                job = order[i]
                acks.append(await self._send(record(job, now)))
                stats.max_lag_ms = max(stats.max_lag_ms, now - emit_ms(job))
                stats.sent += 1
                stats.first_ms = stats.first_ms or now
                stats.last_ms = now
                i += 1
            _reap(acks, stats)
            if progress is not None and time.monotonic() >= next_report:
                progress(stats)
                next_report += 2
            if i < n:
                wait_ms = max(emit_ms(order[i]) - now_ms(), SLICE_S * 1000)
                await asyncio.sleep(min(wait_ms / 1000, 0.5))
        await self._drain(acks, stats)
        return stats

    async def bulk(self, records: Iterable[Record], chunk: int = 5_000) -> LoadStats:
        """Send as fast as the producer takes them; wait for every acknowledgement."""
        stats = LoadStats(first_ms=now_ms())
        acks: deque[asyncio.Future[object]] = deque()
        for record in records:
            acks.append(await self._send(record))
            stats.sent += 1
            if len(acks) >= chunk:
                await self._drain(acks, stats)
        await self._drain(acks, stats)
        stats.last_ms = now_ms()
        return stats

    @staticmethod
    async def _drain(acks: deque[asyncio.Future[object]], stats: LoadStats) -> None:
        if acks:
            await asyncio.gather(*acks, return_exceptions=True)
        _reap(acks, stats)


def _reap(acks: deque[asyncio.Future[object]], stats: LoadStats) -> None:
    """Drop completed acknowledgements from the left, counting failures."""
    while acks and acks[0].done():
        fut = acks.popleft()
        if fut.cancelled() or fut.exception() is not None:
            stats.errors += 1
