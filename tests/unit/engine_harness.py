"""The engine's test harness: real RocksDB partitions, a recording producer, a fixed clock.

The producer stands in for Kafka here only; tests/integration runs the same engine against the
embedded broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

from rocksdict import Options, Rdict

from app.engine import Engine, EngineConfig
from app.jobs import Fired, Job, decode_fired
from app.upstream.producer import Record, TimedRecord
from tables.store import PartitionDB, PartitionStore

__all__ = ["NOW", "RECEIVED", "Harness", "RecordingProducer"]

NOW = 1_700_000_000_000
#: When the schedules of most tests were received: before every due time they use.
RECEIVED = NOW - 3_600_000


class RecordingProducer:
    """Acknowledges every send at once, or fails sends to topics in ``failing``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None, Any]] = []
        self.failing: set[str] = set()
        #: Record batches sent whole: (topic, partition, records), with their ack futures,
        #: which a test resolves (the broker acknowledges) or fails.
        self.record_batches: list[tuple[str, int, list[TimedRecord]]] = []
        self.batch_acks: list[asyncio.Future[Any]] = []
        #: The most records one record batch takes.
        self.batch_room = 2

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Awaitable[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if topic in self.failing:
            fut.set_exception(RuntimeError(f"{topic} refuses writes"))
        else:
            self.sent.append((topic, key, value, partition, headers))
            fut.set_result(None)
        return fut

    async def send_many(
        self, topic: str, partition: int | None, records: Sequence[Record]
    ) -> list[tuple[Awaitable[Any], int]]:
        """Each record through :meth:`send` (so that tests can slow it down per topic)."""
        placed: list[tuple[Awaitable[Any], int]] = []
        for key, value, headers in records:
            placed.append((await self.send(topic, key, value, partition, None, headers), 0))
        return placed

    async def send_record_batch(
        self, topic: str, partition: int, records: Sequence[TimedRecord]
    ) -> tuple[Awaitable[Any], int]:
        taken = list(records[: self.batch_room])
        self.record_batches.append((topic, partition, taken))
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.batch_acks.append(ack)
        return ack, len(taken)

    def to(self, topic: str) -> list[tuple[str, bytes | None, bytes | None, int | None, Any]]:
        return [s for s in self.sent if s[0] == topic]

    def take_fired(self) -> list[tuple[int, list[Fired]]]:
        """Removal records sent so far (fences stay)."""
        removals = [s for s in self.to("fired") if s[1] is None]
        self.sent = [s for s in self.sent if s not in removals]
        return [(s[3] or 0, list(decode_fired(s[2] or b""))) for s in removals]

    def take_fences(self) -> list[tuple[int, bytes]]:
        fences = [s for s in self.to("fired") if s[1] is not None]
        self.sent = [s for s in self.sent if s not in fences]
        return [(s[3] or 0, s[1] or b"") for s in fences]


class Harness:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.dbs: dict[int, PartitionDB] = {}
        self.tmp_path = tmp_path
        self.changelog: list[tuple[int, bytes, bytes | None]] = []
        #: The headers of each changelog record, in the same order: (partition, headers).
        self.changelog_headers: list[tuple[int, list[tuple[str, bytes]]]] = []
        #: The next this many changelog hand-offs raise.
        self.changelog_refusals = 0
        #: Not None: changelog acks wait here until :meth:`ack_changelog` (the broker is slow).
        self.held_acks: list[asyncio.Future[Any]] | None = None
        self.store = PartitionStore(lambda: self.dbs, self.open_db, self._log)
        self.producer = RecordingProducer()
        self.engine = Engine(
            self.store,
            self.producer,
            EngineConfig(fired_topic="fired", dead_letter_topic="dlq", **config),
        )
        self.engine.sync_assignment(1, [0, 1])
        self.version = 0

    async def _log(
        self,
        partition: int,
        records: Sequence[tuple[bytes, bytes | None, list[tuple[str, bytes]]]],
    ) -> list[tuple[Awaitable[Any], int]]:
        if self.changelog_refusals:
            self.changelog_refusals -= 1
            raise RuntimeError("the producer refuses the changelog records")
        self.changelog.extend((partition, key, value) for key, value, _headers in records)
        self.changelog_headers.extend((partition, headers) for _key, _value, headers in records)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.held_acks is None:
            done.set_result(None)
        else:
            self.held_acks.append(done)
        return [(done, index) for index in range(len(records))]

    def ack_changelog(self) -> None:
        """The broker acknowledges the changelog records held so far."""
        for ack in self.held_acks or ():
            ack.set_result(None)
        self.held_acks = []

    def open_db(self, partition: int) -> PartitionDB:
        if partition not in self.dbs:
            db: Any = Rdict(str(self.tmp_path / f"p{partition}"), options=Options(raw_mode=True))
            self.dbs[partition] = db
        return self.dbs[partition]

    def schedule(
        self,
        job_id: str,
        due_ms: int,
        partition: int = 0,
        value: bytes = b"v",
        received_ms: int = RECEIVED,
    ) -> Job:
        self.version += 1
        job = Job(job_id.encode(), due_ms, "out", None, value, (), self.version)
        self.open_db(partition)
        self.engine.schedule(partition, job, received_ms)
        return job

    async def fire(self, now: int) -> int:
        await self.engine.flush()  # as the agent does after each batch
        await self.pass_fences()
        self.probe_caught_up(now)
        wake = await self.engine.fire_due(now, sorted(self.dbs))
        await self.engine.settled()  # the acks and removal records of the pass
        return wake

    async def pass_fences(self) -> None:
        """Send the fences of new partitions and read them back, as the timer and agent do."""
        await self.engine.send_fences(sorted(self.dbs), NOW)
        for partition, fence in self.producer.take_fences():
            self.engine.fence_passed(partition, fence)

    async def fire_due(self, now: int, active: Sequence[int]) -> int:
        """One firing pass, after a probe that finds every partition caught up."""
        self.probe_caught_up(now)
        return await self.engine.fire_due(now, active)

    def probe_caught_up(self, now: int) -> None:
        """The guard's probe finds every partition caught up at ``now`` (app/guard.py)."""
        ends = {p: self.engine.applied_offset(p) + 1 for p in sorted(self.dbs)}
        self.engine.observe_end_offsets(now, ends)

    def forwarded_ids(self) -> list[bytes]:
        return [s[1] or b"" for s in self.producer.to("out")]

    def ack_all(self) -> None:
        for partition, entries in self.producer.take_fired():
            self.engine.remove_fired(partition, entries)

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()  # type: ignore[attr-defined]
