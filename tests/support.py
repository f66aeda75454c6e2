"""Test support: a delayq worker as a real subprocess, and Kafka helpers (no mocks).

A worker is started exactly as in production (``python -m faust -A app worker``, by
:mod:`app.workerproc`), with its own consumer group, topics and data directory per test, so
tests never see each other's records.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.names import changelog_topic
from app.workerproc import ROOT, DeploymentNames, WorkerProcess

__all__ = [
    "ROOT",
    "WAIT_S",
    "Headers",
    "Kafka",
    "Namespace",
    "Worker",
    "by_job_id",
    "create_deployment_topics",
    "create_topics",
    "headers_of",
    "schedule_headers",
    "topic_names",
    "wait_for",
]

WAIT_S = 60.0


@dataclass
class Namespace(DeploymentNames):
    """Topic and group names private to one test."""

    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    partitions: int = 4

    def target(self, name: str = "out") -> str:
        return f"{self.prefix}-{name}"


class Worker(WorkerProcess):
    """One ``faust -A app worker`` process (see :class:`app.workerproc.WorkerProcess`)."""

    def __init__(self, bootstrap: str, ns: Namespace, data_dir: Path, log_path: Path) -> None:
        super().__init__(bootstrap, ns, data_dir, log_path, label="worker")
        self.ns = ns

    def start(self, extra_env: dict[str, str] | None = None) -> Self:
        """Start with ``extra_env`` over the test's settings (for this start only)."""
        self.extra_env = dict(extra_env or {})
        return super().start()

    def wait_ready(self, timeout: float = WAIT_S) -> Self:
        """Block until the worker is ready; a test waits WAIT_S at most."""
        return super().wait_ready(timeout)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


Headers = Sequence[tuple[str, bytes]]


def schedule_headers(
    target: str, *, due_ms: int | None = None, delay_ms: int | None = None, **extra: bytes
) -> list[tuple[str, bytes]]:
    headers = [("delayq-target", target.encode())]
    if due_ms is not None:
        headers.append(("delayq-due-ms", str(due_ms).encode()))
    if delay_ms is not None:
        headers.append(("delayq-delay-ms", str(delay_ms).encode()))
    headers.extend((name.replace("_", "-"), value) for name, value in extra.items())
    return headers


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def topic_names(bootstrap: str) -> set[str]:
    """The topics on the broker (a Metadata request for all topics creates none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def create_deployment_topics(bootstrap: str, ns: Namespace) -> None:
    """The topics a worker of ``ns`` leaves behind (ingest, fired, jobs changelog), without one:
    what the client checks before it writes to the ingest topic."""
    changelog = changelog_topic(ns.app_id)
    await create_topics(bootstrap, [ns.ingest, ns.fired, changelog], ns.partitions)


class Kafka:
    """A producer and consumers against the test broker."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
        timestamp_ms: int | None = None,
        partition: int | None = None,
    ) -> Any:
        return await self.producer.send_and_wait(
            topic,
            value,
            key=key,
            headers=list(headers),
            timestamp_ms=timestamp_ms,
            partition=partition,
        )

    async def send_many(
        self,
        topic: str,
        records: Iterable[tuple[bytes | None, bytes | None, Headers]],
        partition: Callable[[int], int | None] = lambda _i: None,
    ) -> None:
        """Send in one batch, then await every ack; ``partition(i)`` picks record i's partition."""
        futures = [
            await self.producer.send(
                topic, value, key=key, headers=list(headers), partition=partition(i)
            )
            for i, (key, value, headers) in enumerate(records)
        ]
        await asyncio.gather(*futures)

    async def collect(
        self,
        topics: Sequence[str],
        until: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
        timeout: float = WAIT_S,
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Read ``topics`` from the beginning until ``until(records)`` holds (or time is up)."""
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        try:
            while not until(records) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for tp_records in batch.values():
                    records.extend(tp_records)
        finally:
            await consumer.stop()
        return records


def headers_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, bytes]:
    return {name: value for name, value in record.headers}


def by_job_id(records: Iterable[ConsumerRecord[bytes, bytes]]) -> dict[bytes, list[Any]]:
    out: dict[bytes, list[Any]] = {}
    for record in records:
        out.setdefault(headers_of(record)["delayq-job-id"], []).append(record)
    return out


def occurrences(records: Iterable[ConsumerRecord[bytes, bytes]], job_id: bytes) -> list[int]:
    """The ``delayq-due-ms`` of every forward of recurring job ``job_id``, in forward order."""
    return [
        int(headers_of(r)["delayq-due-ms"])
        for r in records
        if headers_of(r).get("delayq-job-id") == job_id
    ]


def missed_occurrences(
    records: Iterable[ConsumerRecord[bytes, bytes]], job_id: bytes, first_ms: int, every_ms: int
) -> int:
    """Check one interval series' forwards: each on the rule, none before its due time, in order,
    a re-forward only of the same occurrence; how many occurrences went unforwarded in between
    (missed while no worker ran: each must be counted as skipped)."""
    ours = [r for r in records if headers_of(r).get("delayq-job-id") == job_id]
    distinct: list[int] = []
    for record in ours:
        due = int(headers_of(record)["delayq-due-ms"])
        assert (due - first_ms) % every_ms == 0, f"{job_id!r}: {due} is not on the rule"
        assert record.timestamp >= due, f"{job_id!r}: forwarded {due - record.timestamp} ms early"
        if distinct and due == distinct[-1]:
            continue  # at-least-once: the same occurrence again
        assert due > (distinct[-1] if distinct else first_ms - 1), f"{job_id!r}: out of order"
        distinct.append(due)
    assert distinct and distinct[0] == first_ms, f"{job_id!r}: first occurrence {distinct[:1]}"
    return sum((b - a) // every_ms - 1 for a, b in itertools.pairwise(distinct))
