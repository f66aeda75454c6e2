"""The measuring consumer: reads a contender's target topic and computes lateness.

Lateness of a forwarded record = its timestamp (CreateTime, set by the forwarding producer when
it sent the record) - its due time (header ``delayq-due-ms``: delayq writes it on every
forward, limit and seed copy the schedule's headers). The receipt time at this consumer is kept
too (``receipt_*`` in the JSON). Negative lateness = forwarded early, counted as ``early``.
A job id (record key) seen twice counts as a duplicate; only its first arrival is measured.
The occurrences of a recurring job share its key: with ``by_occurrence`` set, an arrival is
identified by its key and due time (:meth:`Collector.occurrence_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.metrics import quantile

__all__ = ["Arrival", "Collector", "summarize"]

DUE_HEADER = "delayq-due-ms"
#: Quantiles kept for the CDF picture: even steps, then more of the tail.
CDF_QUANTILES = (
    *(i / 200 for i in range(1, 198)),
    *(0.985 + i / 1000 for i in range(15)),
    0.9995,
    0.9999,
    1.0,
)


@dataclass(frozen=True, slots=True)
class Arrival:
    timestamp_ms: int
    due_ms: int
    receipt_ms: int
    partition: int

    @property
    def lateness_ms(self) -> int:
        return self.timestamp_ms - self.due_ms


class Collector:
    """Reads every partition of ``topic`` from the beginning, in the background."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.arrivals: dict[bytes, Arrival] = {}
        self.duplicates = 0
        self.without_due = 0
        #: Identify arrivals by key and due time (recurring jobs), not by key alone.
        self.by_occurrence = False
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self, partitions: int) -> Collector:
        await self._consumer.start()
        tps = [TopicPartition(self.topic, p) for p in range(partitions)]
        self._consumer.assign(tps)
        for tp in tps:
            self._consumer.seek(tp, 0)
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=20_000)
            receipt = time.time_ns() // 1_000_000
            for records in batch.values():
                for rec in records:
                    self._add(rec, receipt)

    def _add(self, rec: Any, receipt: int) -> None:
        due = next((v for k, v in rec.headers if k == DUE_HEADER), None)
        if due is None:
            self.without_due += 1
            return
        ident = self.occurrence_key(rec.key, int(due)) if self.by_occurrence else rec.key
        if ident in self.arrivals:
            self.duplicates += 1
            return
        self.arrivals[ident] = Arrival(rec.timestamp, int(due), receipt, rec.partition)

    @staticmethod
    def occurrence_key(key: bytes, due_ms: int) -> bytes:
        """How an occurrence of a recurring job is identified with ``by_occurrence`` set."""
        return b"%s@%d" % (key, due_ms)

    def count(self, keys: Collection[bytes]) -> int:
        return sum(1 for key in keys if key in self.arrivals)

    async def wait_for(
        self,
        keys: Collection[bytes],
        timeout_s: float,
        progress: Callable[[int], None] | None = None,
        stop_early: Callable[[], bool] | None = None,
    ) -> bool:
        """Wait until every key arrived (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        next_report = time.monotonic() + 2
        missing = {key for key in keys if key not in self.arrivals}
        while missing:
            if self._task is not None and self._task.done():
                self._task.result()  # the consumer died: raise why
            missing = {key for key in missing if key not in self.arrivals}
            now = time.monotonic()
            if not missing:
                break
            if now > deadline or (stop_early is not None and stop_early()):
                return False
            if progress is not None and now >= next_report:
                progress(len(keys) - len(missing))
                next_report += 2
            await asyncio.sleep(0.05)
        return True

    def lateness(self, keys: Sequence[bytes]) -> list[int]:
        return [a.lateness_ms for key in keys if (a := self.arrivals.get(key)) is not None]

    def receipt_lateness(self, keys: Sequence[bytes]) -> list[int]:
        return [
            a.receipt_ms - a.due_ms for key in keys if (a := self.arrivals.get(key)) is not None
        ]


def summarize(
    lateness: Sequence[int], expected: int, duplicates: int = 0, with_cdf: bool = False
) -> dict[str, Any]:
    """Counts and percentiles (ms) of one contender's lateness."""
    values = sorted(lateness)
    out: dict[str, Any] = {
        "expected": expected,
        "delivered": len(values),
        "missing": expected - len(values),
        "duplicates": duplicates,
        "early": sum(1 for v in values if v < 0),
        "min_ms": values[0] if values else None,
        "p50_ms": quantile(values, 0.50),
        "p99_ms": quantile(values, 0.99),
        "p999_ms": quantile(values, 0.999),
        "max_ms": values[-1] if values else None,
        "mean_ms": round(sum(values) / len(values), 1) if values else None,
    }
    if with_cdf and values:
        out["cdf"] = [[q, quantile(values, q)] for q in CDF_QUANTILES]
    return out
