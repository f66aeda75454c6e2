"""Commands the stream skipped are read back and applied (app/gaps.py).

Faust can commit a partition's offset past commands it never delivered (a rebalance race). The
test makes that happen on purpose: with the worker stopped, the group's offset is moved past two
commands, as Faust would have committed it. The restarted worker sees the next command beyond the
last one it applied and must read the two back.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.structs import OffsetAndMetadata

from app.api.routing import partition_of
from app.times import now_ms
from tests.conftest import WorkerFactory
from tests.support import Kafka, Namespace, Worker, schedule_headers, wait_for

pytestmark = pytest.mark.integration


class NamedLikeFaust(RoundRobinPartitionAssignor):
    """Joins a group that Faust's workers made (a group keeps its protocol name on Tansu)."""

    name = "faust"


async def commit_offset(kafka: Kafka, group: str, tp: TopicPartition, offset: int) -> None:
    """Commit ``offset`` as a member of ``group`` (Tansu refuses commits from non-members)."""
    consumer = AIOKafkaConsumer(
        tp.topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=2_000,
        heartbeat_interval_ms=500,
        partition_assignment_strategy=(NamedLikeFaust,),
    )
    await consumer.start()
    try:
        while tp not in consumer.assignment():
            await consumer.getmany(timeout_ms=200, max_records=1)
        await consumer.commit({tp: OffsetAndMetadata(offset, "")})
        assert await consumer.committed(tp) == offset
    finally:
        await consumer.stop()


async def committed_offset(kafka: Kafka, group: str, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group)
    await consumer.start()
    try:
        return await consumer.committed(tp) or 0
    finally:
        await consumer.stop()


def ids_in_one_partition(ns: Namespace, count: int) -> tuple[int, list[str]]:
    """``count`` job ids that Kafka's default partitioner puts in the same partition."""
    ids = [f"gap-{i}" for i in range(200)]
    partition = partition_of(ids[0].encode(), ns.partitions)
    same = [i for i in ids if partition_of(i.encode(), ns.partitions) == partition]
    return partition, same[:count]


def pending(worker: Worker, job_id: str) -> bool:
    return "http_status" not in worker.get_json(f"/jobs/{job_id}")


async def test_commands_committed_past_but_never_applied_are_read_back(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    partition, (first, skipped_1, skipped_2, after) = ids_in_one_partition(ns, 4)
    due = now_ms() + 3_600_000
    # Given a worker that applied one command of a partition, then stopped
    worker = start_worker()
    await kafka.send(ns.ingest, first.encode(), b"v", schedule_headers(ns.target(), due_ms=due))
    wait_for(lambda: pending(worker, first), "first applied")
    worker.stop()
    # And two commands after it whose offsets the group then committed past, unapplied
    for job_id in (skipped_1, skipped_2, after):
        headers = schedule_headers(ns.target(), due_ms=due)
        await kafka.send(ns.ingest, job_id.encode(), b"v", headers)
    await commit_offset(kafka, ns.app_id, TopicPartition(ns.ingest, partition), 3)
    # When the worker starts again (its stream resumes at the last command)
    worker = start_worker(data_dir=worker.data_dir)
    # Then the skipped commands are applied too, and counted
    for job_id in (after, skipped_1, skipped_2):
        wait_for(lambda j=job_id: pending(worker, j), f"{job_id} applied")
    assert worker.get_json("/stats")["counters"]["gaps_read_back"] == 2
    # And the group's offset moves past them (Faust did not see them acknowledged)
    tp = TopicPartition(ns.ingest, partition)
    deadline = time.monotonic() + 60
    while await committed_offset(kafka, ns.app_id, tp) < 4:
        assert time.monotonic() < deadline, "the offset stayed behind the read-back commands"
        await asyncio.sleep(0.5)
