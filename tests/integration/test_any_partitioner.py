"""Producers with any partitioner: commands find their job whatever partition they land on.

librdkafka's ``fnv1a`` partitioner puts a key where sarama's default does; ``consistent_random``
is librdkafka's own default. Both are mixed here with murmur2 producers (aiokafka, the HTTP
API), as users mix services. Each landing partition is read from the producer's delivery
report, so every test proves that its commands landed off their job's home partition.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Producer

from app.moving import producer_partitioner
from app.times import now_ms
from tests.conftest import WorkerFactory
from tests.support import Kafka, Namespace, Worker, by_job_id, headers_of, wait_for

pytestmark = pytest.mark.integration

FNV1A = "fnv1a"
CONSISTENT_RANDOM = "consistent_random"
#: How producer_partitioner names what each librdkafka partitioner does with a key.
_PATTERN = {FNV1A: "FNV-1a", CONSISTENT_RANDOM: "CRC-32"}


def home(job_id: bytes, partitions: int) -> int:
    """Kafka's default partitioner, as the Java client and aiokafka compute it."""
    partition: int = DefaultPartitioner()(job_id, list(range(partitions)), list(range(partitions)))
    return partition


def away_ids(prefix: str, partitioner: str, count: int, partitions: int) -> list[bytes]:
    """Ids that ``partitioner`` puts off their home partition (checked again on delivery)."""
    ids: list[bytes] = []
    n = 0
    while len(ids) < count:
        job_id = f"{prefix}-{n}".encode()
        n += 1
        home_partition = home(job_id, partitions)
        landing = [p for p in range(partitions) if p != home_partition]
        if any(
            producer_partitioner(job_id, p, partitions).startswith(_PATTERN[partitioner])
            for p in landing
        ):
            ids.append(job_id)
    return ids


class Librdkafka:
    """A confluent-kafka producer with its defaults but the partitioner; records where each
    record landed."""

    def __init__(self, bootstrap: str, partitioner: str) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "partitioner": partitioner})
        self.partitioner = partitioner
        self.landed: dict[bytes, list[int]] = {}

    def produce(
        self, topic: str, key: bytes, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        def delivered(error: Any, message: Any) -> None:
            assert error is None, error
            self.landed.setdefault(message.key(), []).append(message.partition())

        self._producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)

    def flush(self) -> None:
        assert self._producer.flush(30) == 0, "records not delivered"


def schedule(target: str, due_ms: int) -> list[tuple[str, bytes]]:
    return [("delayq-target", target.encode()), ("delayq-due-ms", str(due_ms).encode())]


def http(worker: Worker, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{worker.web_port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def stats(worker: Worker) -> dict[str, Any]:
    status, body = http(worker, "GET", "/stats")
    assert status == 200, body
    return dict(body)


def assert_landed_away(producer: Librdkafka, ids: list[bytes], partitions: int) -> None:
    """Each command landed off its job's home, where the worker's log line says it would."""
    for job_id in ids:
        landed = set(producer.landed[job_id])
        assert home(job_id, partitions) not in landed, (job_id, landed)
        for partition in landed:
            guess = producer_partitioner(job_id, partition, partitions)
            assert guess.startswith(_PATTERN[producer.partitioner]), (job_id, partition, guess)


async def test_jobs_scheduled_by_other_partitioners_are_found_cancelled_and_forwarded(
    start_worker: WorkerFactory, kafka: Kafka, ns: Namespace
) -> None:
    # Given jobs scheduled by librdkafka producers with fnv1a (sarama's) and consistent_random
    worker = start_worker()
    target = ns.target()
    due = now_ms() + 8_000
    ids = {
        partitioner: away_ids(f"{partitioner}-job", partitioner, 4, ns.partitions)
        for partitioner in (FNV1A, CONSISTENT_RANDOM)
    }
    for partitioner, job_ids in ids.items():
        producer = Librdkafka(kafka.bootstrap, partitioner)
        for job_id in job_ids:
            producer.produce(ns.ingest, job_id, b"v-" + job_id, schedule(target, due))
        producer.flush()
        assert_landed_away(producer, job_ids, ns.partitions)
    all_ids = [job_id for job_ids in ids.values() for job_id in job_ids]

    # When they are looked up over HTTP
    def found(job_id: bytes) -> bool:
        return http(worker, "GET", f"/jobs/{job_id.decode()}")[0] == 200

    for job_id in all_ids:
        wait_for(lambda job_id=job_id: found(job_id), f"GET /jobs/{job_id!r}")  # type: ignore[misc]
    # Then each is found in its home partition, by GET and in the list
    for job_id in all_ids:
        _status, body = http(worker, "GET", f"/jobs/{job_id.decode()}")
        assert body["partition"] == home(job_id, ns.partitions), body
    _status, listed = http(worker, "GET", "/jobs?limit=1000")
    partitions = {job["id"].encode(): job["partition"] for job in listed["jobs"]}
    for job_id in all_ids:
        assert partitions[job_id] == home(job_id, ns.partitions)

    # And by the go-delayqueue endpoints
    compat = "/delay-queue/api/jobs"
    for job_id in all_ids:
        status, body = http(worker, "POST", f"{compat}/get", {"job_id": job_id.decode()})
        assert status == 200 and body["data"]["id"] == job_id.decode(), body

    # When one of each is deleted: over the native API, and the go-delayqueue one
    deleted = [job_ids[0] for job_ids in ids.values()]
    status, body = http(worker, "DELETE", f"/jobs/{deleted[0].decode()}?wait=true")
    assert status == 200 and body["status"] == "cancelled", (status, body)
    status, body = http(worker, "POST", f"{compat}/remove", {"job_id": deleted[1].decode()})
    assert status == 200 and body["code"] == 0, body
    wait_for(
        lambda: http(worker, "GET", f"/jobs/{deleted[1].decode()}")[0] == 404,
        "the go-delayqueue remove applied",
    )

    # Then the rest are forwarded, each with its own value, and the deleted never
    expected = set(all_ids) - set(deleted)
    records = await kafka.collect([target], lambda rs: expected <= set(by_job_id(rs)))
    forwarded = by_job_id(records)
    assert set(forwarded) == expected
    for job_id, forwards in forwarded.items():
        assert {r.value for r in forwards} == {b"v-" + job_id}
        assert {headers_of(r)["delayq-due-ms"] for r in forwards} == {str(due).encode()}
    # And the moves were counted
    assert stats(worker)["counters"]["moved"] == len(all_ids)


async def test_cancels_and_replaces_win_whichever_partitioner_sent_them(
    start_worker: WorkerFactory, kafka: Kafka, ns: Namespace
) -> None:
    # Given jobs scheduled with murmur2 (aiokafka), one with fnv1a and one over HTTP
    worker = start_worker()
    target = ns.target()
    first_due, replaced_due, sentinel_due = (now_ms() + ms for ms in (6_000, 7_000, 9_000))
    fnv = Librdkafka(kafka.bootstrap, FNV1A)
    crc = Librdkafka(kafka.bootstrap, CONSISTENT_RANDOM)
    cancel_by_fnv = away_ids("m", FNV1A, 1, ns.partitions)[0]
    replace_by_crc = away_ids("r", CONSISTENT_RANDOM, 1, ns.partitions)[0]
    replace_by_http = away_ids("h", FNV1A, 1, ns.partitions)[0]
    cancel_http_job = away_ids("c", FNV1A, 1, ns.partitions)[0]
    for job_id in (cancel_by_fnv, replace_by_crc):
        await kafka.send(ns.ingest, job_id, b"first", schedule(target, first_due))
    fnv.produce(ns.ingest, replace_by_http, b"first", schedule(target, first_due))
    fnv.flush()
    job = {"id": cancel_http_job.decode(), "target": target, "at": first_due, "value": "first"}
    status, body = http(worker, "POST", "/jobs", job)
    assert status in (200, 201, 202), body

    # When another client cancels or replaces each
    fnv.produce(ns.ingest, cancel_by_fnv, None, [])
    fnv.produce(ns.ingest, cancel_http_job, None, [])
    crc.produce(ns.ingest, replace_by_crc, b"second", schedule(target, replaced_due))
    fnv.flush()
    crc.flush()
    assert_landed_away(fnv, [cancel_by_fnv, cancel_http_job, replace_by_http], ns.partitions)
    assert_landed_away(crc, [replace_by_crc], ns.partitions)
    wait_for(
        lambda: http(worker, "GET", f"/jobs/{replace_by_http.decode()}")[0] == 200,
        "the fnv1a schedule at home",
    )
    job = {"id": replace_by_http.decode(), "target": target, "at": replaced_due, "value": "second"}
    status, body = http(worker, "POST", "/jobs", job)
    assert status in (200, 201, 202), body
    sentinel = b"sentinel"
    await kafka.send(ns.ingest, sentinel, b"s", schedule(target, sentinel_due))

    # Then the cancelled are never forwarded and the replaced only with their replacement
    records = await kafka.collect([target], lambda rs: sentinel in by_job_id(rs))
    forwarded = by_job_id(records)
    assert cancel_by_fnv not in forwarded
    assert cancel_http_job not in forwarded
    for job_id in (replace_by_crc, replace_by_http):
        assert {(r.value, headers_of(r)["delayq-due-ms"]) for r in forwarded[job_id]} == {
            (b"second", str(replaced_due).encode())
        }, job_id


async def test_a_bad_command_on_another_partition_is_dead_lettered_once(
    start_worker: WorkerFactory, kafka: Kafka, ns: Namespace
) -> None:
    # Given a record with a value but no target, written with fnv1a off its home partition
    start_worker()
    bad = away_ids("bad", FNV1A, 1, ns.partitions)[0]
    sentinel = away_ids("after-bad", FNV1A, 1, ns.partitions)[0]
    fnv = Librdkafka(kafka.bootstrap, FNV1A)
    fnv.produce(ns.ingest, bad, b"no target", [("delayq-due-ms", b"1")])
    fnv.produce(ns.ingest, sentinel, b"also no target", [("delayq-due-ms", b"1")])
    fnv.flush()
    assert_landed_away(fnv, [bad, sentinel], ns.partitions)

    # When the worker has handled both
    records = await kafka.collect([ns.dead_letters], lambda rs: any(r.key == sentinel for r in rs))

    # Then the bad record is dead-lettered exactly once, with its reason
    letters = [r for r in records if r.key == bad]
    assert len(letters) == 1, letters
    assert b"delayq-target" in headers_of(letters[0])["delayq-error"]


async def test_a_command_carrying_a_moved_from_header_of_its_own_is_found_at_home(
    start_worker: WorkerFactory, kafka: Kafka, ns: Namespace
) -> None:
    # Given a schedule written off its home partition with a delayq-moved-from header that no
    # worker wrote (a producer's own, or a mirror's copy of another cluster's ingest topic)
    worker = start_worker()
    job_id = away_ids("mirrored", FNV1A, 1, ns.partitions)[0]
    fnv = Librdkafka(kafka.bootstrap, FNV1A)
    headers = [*schedule(ns.target(), now_ms() + 60_000), ("delayq-moved-from", b"0:12345")]
    fnv.produce(ns.ingest, job_id, b"v", headers)
    fnv.flush()
    assert_landed_away(fnv, [job_id], ns.partitions)

    # When it is looked up over HTTP
    path = f"/jobs/{job_id.decode()}"
    wait_for(lambda: http(worker, "GET", path)[0] == 200, "GET finds the job")

    # Then it lives in its home partition, and a cancel finds it there
    _status, body = http(worker, "GET", path)
    assert body["partition"] == home(job_id, ns.partitions), body
    status, body = http(worker, "DELETE", f"{path}?wait=true")
    assert status == 200 and body["status"] == "cancelled", (status, body)


async def test_a_sigkill_while_commands_are_moved_loses_none_and_applies_none_twice(
    start_worker: WorkerFactory, kafka: Kafka, ns: Namespace
) -> None:
    # Given a worker, and thousands of commands written with fnv1a: per job a schedule, its
    # replacement, and for every third job a cancel after them
    worker = start_worker()
    target = ns.target()
    first_due, due = now_ms() + 11_000, now_ms() + 12_000
    job_ids = [f"kill-{n}".encode() for n in range(3_000)]
    cancelled = set(job_ids[::3])
    fnv = Librdkafka(kafka.bootstrap, FNV1A)
    for job_id in job_ids:
        fnv.produce(ns.ingest, job_id, b"first", schedule(target, first_due))
        fnv.produce(ns.ingest, job_id, b"second", schedule(target, due))
        if job_id in cancelled:
            fnv.produce(ns.ingest, job_id, None, [])

    # When the worker is killed while it moves them, and started again on its data directory
    wait_for(lambda: stats(worker)["counters"]["moved"] > 0, "the first moves")
    fnv.flush()
    worker.kill()
    restarted = start_worker("b", data_dir=worker.data_dir)
    sentinel = b"after-kill"
    await kafka.send(ns.ingest, sentinel, b"s", schedule(target, due + 1_000))

    # Then every job not cancelled is forwarded with its replacement only, no cancelled one is
    expected = set(job_ids) - cancelled
    records = await kafka.collect(
        [target], lambda rs: expected | {sentinel} <= set(by_job_id(rs)), timeout=120
    )
    forwarded = by_job_id(records)
    assert set(forwarded) - {sentinel} == expected
    for job_id in expected:
        assert {(r.value, headers_of(r)["delayq-due-ms"]) for r in forwarded[job_id]} == {
            (b"second", str(due).encode())
        }, job_id
    away = [j for j in job_ids if home(j, ns.partitions) not in fnv.landed[j]]
    assert len(away) > len(job_ids) // 2
    counters = stats(restarted)["counters"]
    assert counters["moved"] > 0
