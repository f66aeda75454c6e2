"""app.client: the Python client, async and blocking, against the embedded broker and a worker."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from app.client import AsyncDelayQueue, DelayQueue, ScheduledJob
from app.commands import Cancel, parse_command
from app.embedded import EmbeddedBroker, free_port
from app.errors import BrokerUnavailable, IngestTopicError
from app.jobs import Job
from app.outcomes import CancelOutcome
from app.recurrence import Rule
from app.times import now_ms
from tests.conftest import WorkerFactory
from tests.support import (
    ROOT,
    Kafka,
    Namespace,
    create_deployment_topics,
    create_topics,
    headers_of,
    topic_names,
)

pytestmark = pytest.mark.integration

Records = list[ConsumerRecord[bytes, bytes]]
#: A bound the client must keep when the broker is gone (request_timeout=1 s, plus slack for a
#: busy 2-core machine).
UNAVAILABLE_WITHIN_S = 30.0


def job_id_of(record: ConsumerRecord[bytes, bytes]) -> str:
    return headers_of(record)["delayq-job-id"].decode()


def has_jobs(*job_ids: str) -> Callable[[Records], bool]:
    return lambda records: set(job_ids) <= {job_id_of(r) for r in records}


def has_keys(*keys: bytes) -> Callable[[Records], bool]:
    return lambda records: set(keys) <= {r.key for r in records}


def by_job(records: Records) -> dict[str, ConsumerRecord[bytes, bytes]]:
    return {job_id_of(r): r for r in records}


def parse_ingest(record: ConsumerRecord[bytes, bytes], ingest: str) -> Job | Cancel:
    """What the worker makes of an ingest record (the contract check of app.commands)."""
    return parse_command(
        record.key,
        record.value,
        list(record.headers),
        timestamp_ms=record.timestamp,
        version=record.offset,
        forbidden_targets=frozenset({ingest}),
    )


@pytest.fixture
async def target(broker: EmbeddedBroker, ns: Namespace) -> str:
    """One partition: forwards appear in the order the worker writes them."""
    await create_topics(broker.bootstrap, [ns.target()], 1)
    return ns.target()


@pytest.fixture
def closed_port() -> str:
    """An address where nothing listens."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """An address that accepts TCP connections (kernel backlog) but never answers a request."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


# --- forwarded by a worker ---------------------------------------------------------------------


async def test_async_client_schedules_a_job_that_the_worker_forwards(
    broker: EmbeddedBroker, ns: Namespace, kafka: Kafka, target: str, start_worker: WorkerFactory
) -> None:
    # Given a worker
    start_worker()
    # When the async client schedules a job by delay, with a key and a header
    async with AsyncDelayQueue(broker.bootstrap, ns.ingest, app_id=ns.app_id) as queue:
        before = now_ms()
        job = await queue.schedule(
            b"\x00close order 1\xff",
            target=target,
            delay="1s",
            key=b"order-1",
            headers={"trace": "t-1"},
        )
        after = now_ms()
    # Then it returns a generated id and the due time the worker computes
    assert re.fullmatch(r"[0-9a-f]{32}", job.job_id)
    assert before + 1_000 <= job.due_ms <= after + 1_000
    assert job.due_at == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=job.due_ms)
    # And the worker forwards value, key and headers as promised, not before the due time
    [record] = await kafka.collect([target], has_jobs(job.job_id))
    assert record.value == b"\x00close order 1\xff"
    assert record.key == b"order-1"
    assert headers_of(record) == {
        "trace": b"t-1",
        "delayq-job-id": job.job_id.encode(),
        "delayq-due-ms": str(job.due_ms).encode(),
    }
    assert record.timestamp >= job.due_ms


async def test_sync_client_schedules_from_a_thread_without_an_event_loop(
    broker: EmbeddedBroker, ns: Namespace, kafka: Kafka, target: str, start_worker: WorkerFactory
) -> None:
    # Given a worker
    start_worker()
    at = datetime.now(UTC) + timedelta(milliseconds=800)

    # When the blocking client is used from a plain thread (no running loop there)
    def use_blocking_client() -> list[ScheduledJob]:
        with DelayQueue(broker.bootstrap, ns.ingest, app_id=ns.app_id) as queue:
            return [
                queue.schedule(
                    "text é",
                    target=target,
                    at=at,
                    job_id="sync-at",
                    headers=[("h", b"1"), ("h", "2")],
                ),
                queue.schedule(None, target=target, delay=timedelta(milliseconds=500)),
                queue.delay(b"delayed", "300ms", target=target, key="k-delay"),
                queue.at(b"at", at.isoformat(), target=target, job_id="sync-at-shorthand"),
            ]

    jobs = await asyncio.to_thread(use_blocking_client)
    # Then each job comes back with its due time, and all of them are forwarded
    at_job, tombstone_job, delay_job, at_shorthand = jobs
    assert at_job == ScheduledJob("sync-at", at_job.due_ms)
    assert (
        at_job.due_ms
        == at_shorthand.due_ms
        == (at - datetime(1970, 1, 1, tzinfo=UTC)) // (timedelta(milliseconds=1))
    )
    records = by_job(await kafka.collect([target], has_jobs(*(j.job_id for j in jobs))))
    assert records["sync-at"].value == "text é".encode()
    assert records["sync-at"].key == b"sync-at"  # default key: the job id
    assert records["sync-at"].headers[:2] == (("h", b"1"), ("h", b"2"))  # repeated, in order
    assert records[tombstone_job.job_id].value is None
    assert records[delay_job.job_id].key == b"k-delay"
    assert records[delay_job.job_id].value == b"delayed"
    assert records["sync-at-shorthand"].value == b"at"
    for job in jobs:
        assert headers_of(records[job.job_id])["delayq-due-ms"] == str(job.due_ms).encode()


async def test_async_shorthands_delay_and_at(
    broker: EmbeddedBroker, ns: Namespace, kafka: Kafka, target: str, start_worker: WorkerFactory
) -> None:
    # Given a worker
    start_worker()
    async with AsyncDelayQueue(broker.bootstrap, ns.ingest, app_id=ns.app_id) as queue:
        # When jobs are scheduled with go-zero's Delay(body, d) and At(body, t)
        delayed = await queue.delay(b"d", 500, target=target, job_id="delay-ms")
        delayed_td = await queue.delay(b"td", timedelta(seconds=1), target=target)
        at_ms = now_ms() + 700
        at = await queue.at(b"a", at_ms, target=target, key=b"k-a", headers={"x": b"y"})
    # Then the at-job is due exactly when asked, and every one is forwarded
    assert at.due_ms == at_ms
    records = by_job(
        await kafka.collect([target], has_jobs(delayed.job_id, delayed_td.job_id, at.job_id))
    )
    assert records["delay-ms"].value == b"d"
    assert records[delayed_td.job_id].value == b"td"
    assert (records[at.job_id].key, records[at.job_id].value) == (b"k-a", b"a")
    assert headers_of(records[at.job_id])["x"] == b"y"


async def test_a_cancelled_job_is_not_forwarded(
    broker: EmbeddedBroker, ns: Namespace, kafka: Kafka, target: str, start_worker: WorkerFactory
) -> None:
    # Given a worker and a job due in a few seconds
    start_worker()
    async with AsyncDelayQueue(broker.bootstrap, ns.ingest, app_id=ns.app_id) as queue:
        doomed = await queue.schedule(b"doomed", target=target, delay="4s", job_id="doomed")
        # When it is cancelled, and a second job is scheduled to fire after it
        await queue.cancel("doomed")
        later = await queue.at(b"later", doomed.due_ms + 1_000, target=target, job_id="later")
        # Then the second one is forwarded
        await kafka.collect([target], has_jobs(later.job_id))
        # And once a marker scheduled after that is through too (the worker forwards in passes
        # over its partitions: a job forwarded in the same pass as "later" is in by now) ...
        await queue.delay(b"marker", 0, target=target, job_id="marker")
    records = await kafka.collect([target], has_jobs("marker"))
    # ... the cancelled job never was
    assert [job_id_of(r) for r in records] == ["later", "marker"]


async def test_a_cancel_that_waits_returns_who_won(
    broker: EmbeddedBroker, ns: Namespace, kafka: Kafka, target: str, start_worker: WorkerFactory
) -> None:
    # Given a worker, a job due in an hour and one due at once (forwarded)
    worker = start_worker()
    api_url = f"http://127.0.0.1:{worker.web_port}"
    async with AsyncDelayQueue(broker.bootstrap, ns.ingest, app_id=ns.app_id, api_url=api_url) as q:
        later = await q.schedule(b"later", target=target, delay="1h", job_id="later")
        await q.delay(b"now", 0, target=target, job_id="now")
        await kafka.collect([target], has_jobs("now"))
        # When each is cancelled with wait=True
        cancelled = await q.cancel("later", wait=True)
        too_late = await q.cancel("now", wait=True)
    # Then the client says which cancel won, and when the other job was forwarded
    assert cancelled == CancelOutcome("cancelled", later.due_ms)
    assert too_late is not None and too_late.outcome == "too_late"
    assert too_late.forwarded_ms is not None and too_late.due_ms is not None
    assert too_late.forwarded_ms >= too_late.due_ms


async def test_recurring_jobs_fire_at_each_occurrence_and_carry_their_rule(
    broker: EmbeddedBroker, ns: Namespace, kafka: Kafka, target: str, start_worker: WorkerFactory
) -> None:
    # Given a worker
    start_worker()
    weekdays = Rule(cron="0 9 * * 1-5", timezone="Europe/Berlin", until_ms=4_102_444_800_000)
    before = now_ms()
    async with AsyncDelayQueue(broker.bootstrap, ns.ingest, app_id=ns.app_id) as queue:
        # When the async client schedules a job every second, and the blocking one a cron job
        ticker = await queue.every(b"tick", "1s", target=target, job_id="ticker")

        def schedule_cron() -> ScheduledJob:
            with DelayQueue(broker.bootstrap, ns.ingest, app_id=ns.app_id) as blocking:
                return blocking.cron(
                    b"standup",
                    "0 9 * * 1-5",
                    target=target,
                    timezone="Europe/Berlin",
                    until="2100-01-01T00:00:00Z",
                    job_id="standup",
                )

        standup = await asyncio.to_thread(schedule_cron)
        after = now_ms()

        def ticks(records: Records) -> list[ConsumerRecord[bytes, bytes]]:
            return [r for r in records if job_id_of(r) == "ticker"]

        # Then the ticker starts one interval from now and is forwarded at each occurrence,
        # each forward with its own due time, none early
        assert before + 1_000 <= ticker.due_ms <= after + 1_000
        fired = ticks(await kafka.collect([target], lambda records: len(ticks(records)) >= 2))
        dues = [int(headers_of(r)["delayq-due-ms"]) for r in fired]
        # (a worker that lags by an interval sends only the latest occurrence due: skips one)
        assert dues == sorted(set(dues)) and dues[0] >= ticker.due_ms, dues
        assert all((due - ticker.due_ms) % 1_000 == 0 for due in dues), dues
        assert all(
            r.timestamp >= due and r.value == b"tick" for r, due in zip(fired, dues, strict=True)
        )
        await queue.cancel("ticker")
    # And the cron job's record holds its rule, due at its next match, as the worker reads it
    records = await kafka.collect([ns.ingest], has_keys(b"standup"))
    [job] = [parse_ingest(r, ns.ingest) for r in records if r.key == b"standup"]
    assert isinstance(job, Job)
    assert job.rule == weekdays
    assert (
        job.due_ms == standup.due_ms in {weekdays.first_after(before), weekdays.first_after(after)}
    )


# --- the records written, as the worker reads them ----------------------------------------------


async def test_records_follow_the_wire_contract_and_defaults_come_from_settings(
    broker: EmbeddedBroker, ns: Namespace, kafka: Kafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the topics of a deployment, DELAYQ_* settings in the environment and no arguments
    await create_deployment_topics(broker.bootstrap, ns)
    monkeypatch.setenv("DELAYQ_BROKER_URL", f"kafka://{broker.bootstrap}")
    monkeypatch.setenv("DELAYQ_INGEST_TOPIC", ns.ingest)
    monkeypatch.setenv("DELAYQ_APP_ID", ns.app_id)
    async with AsyncDelayQueue() as queue:
        assert (queue.bootstrap_servers, queue.ingest_topic) == ([broker.bootstrap], ns.ingest)
        assert queue.app_id == ns.app_id
        # When a job is scheduled by delay, one by time, and one cancelled
        by_delay = await queue.schedule(
            b"v", target="out", delay="90s", key=b"k", job_id="j1", headers={"a": b"1"}
        )
        by_time = await queue.schedule(b"w", target="out", at="2030-05-01T12:00:00Z", job_id="j2")
        await queue.cancel("j3")
    records = await kafka.collect([ns.ingest], has_keys(b"j1", b"j2", b"j3"))
    commands = {r.key: (r, parse_ingest(r, ns.ingest)) for r in records}
    # Then the worker reads the same jobs: a delay counts from the record's timestamp
    record, job = commands[b"j1"]
    assert isinstance(job, Job)
    assert headers_of(record)["delayq-delay-ms"] == b"90000"
    assert "delayq-due-ms" not in headers_of(record)
    assert (job.due_ms, job.target, job.key, job.value) == (by_delay.due_ms, "out", b"k", b"v")
    assert job.due_ms == record.timestamp + 90_000
    assert job.headers == (("a", b"1"),)
    record, job = commands[b"j2"]
    assert isinstance(job, Job)
    assert headers_of(record)["delayq-due-ms"] == str(by_time.due_ms).encode()
    assert job.due_ms == by_time.due_ms == 1_903_867_200_000
    assert (job.key, job.value) == (None, b"w")  # forwarded with the job id as key
    # And a cancel is a null value without contract headers
    record, command = commands[b"j3"]
    assert command == Cancel(b"j3")
    assert (record.value, record.headers) == (None, ())


async def test_bad_arguments_raise_before_anything_is_produced(
    broker: EmbeddedBroker, ns: Namespace, kafka: Kafka
) -> None:
    await create_deployment_topics(broker.bootstrap, ns)
    async with AsyncDelayQueue(broker.bootstrap, ns.ingest, app_id=ns.app_id) as queue:
        # Given a connected client / When every kind of bad argument is given
        for kwargs, message in BAD_SCHEDULES + BAD_RULES:
            with pytest.raises(ValueError, match=message):
                await queue.schedule(**{"value": b"v", **kwargs})
        for job_id, message in BAD_JOB_IDS:
            with pytest.raises(ValueError, match=message):
                await queue.cancel(job_id)
        # And then one good schedule
        await queue.schedule(b"ok", target="out", delay=0, job_id="sentinel")
    # Then only the good one reached the ingest topic
    records = await kafka.collect([ns.ingest], has_keys(b"sentinel"))
    assert [r.key for r in records] == [b"sentinel"]


TARGET = {"target": "out"}
BAD_SCHEDULES: list[tuple[dict[str, Any], str]] = [
    ({"target": "bad topic!", "delay": "1s"}, "^target: 'bad topic!' is not a valid Kafka topic"),
    ({"target": "", "delay": "1s"}, "^target: "),
    ({"target": "x" * 250, "delay": "1s"}, "^target: "),
    ({"target": "..", "delay": "1s"}, "^target: "),
    ({**TARGET}, r"^give exactly one of delay= or at= \(got neither\)"),
    ({**TARGET, "delay": "1s", "at": 0}, r"^give exactly one of delay= or at= \(got both\)"),
    ({**TARGET, "delay": "-1s"}, "^delay: invalid duration '-1s': must not be negative"),
    ({**TARGET, "delay": -5}, "^delay: .*must not be negative"),
    ({**TARGET, "delay": "5x"}, "^delay: invalid duration '5x': unknown unit"),
    ({**TARGET, "at": "2030-05-01T12:00:00"}, "^at: invalid time .*needs a time zone"),
    ({**TARGET, "at": datetime(2030, 5, 1)}, "^at: invalid time .*needs a time zone"),
    ({**TARGET, "delay": "1s", "job_id": ""}, "^job_id: must not be empty"),
    ({**TARGET, "delay": "1s", "job_id": "x" * 1025}, "^job_id: longer than 1024 bytes"),
    ({**TARGET, "delay": "1s", "job_id": "é" * 513}, "^job_id: longer than 1024 bytes"),
    ({**TARGET, "delay": "1s", "job_id": 7}, "^job_id: expected a str"),
    ({**TARGET, "delay": "1s", "key": 7}, "^key: expected bytes or str"),
    ({**TARGET, "delay": "1s", "value": 7}, "^value: expected bytes or str"),
    ({**TARGET, "delay": "1s", "value": "\ud800"}, "^value: not encodable as UTF-8"),
    ({**TARGET, "delay": "1s", "headers": {"delayq-target": b"x"}}, "^headers: 'delayq-target'"),
    ({**TARGET, "delay": "1s", "headers": {"": b"x"}}, "^headers: a header name"),
    ({**TARGET, "delay": "1s", "headers": {"h": None}}, r"^headers\['h'\]: expected bytes"),
    ({**TARGET, "delay": "1s", "headers": ["h=1"]}, "^headers: expected"),
    ({**TARGET, "delay": "1s", "headers": "h=1"}, "^headers: expected"),
]
BAD_JOB_IDS: list[tuple[Any, str]] = [("", "^job_id: must not be empty"), ("y" * 1025, "longer")]
#: Recurring jobs the worker would dead-letter: refused by the client with the argument at fault.
BAD_RULES: list[tuple[dict[str, Any], str]] = [
    ({**TARGET, "cron": "61 * * * *"}, r"^cron: '61 \* \* \* \*' is not a cron rule: Bad minute$"),
    ({**TARGET, "cron": 5}, "^cron: expected a str, not int$"),
    ({**TARGET, "cron": "@daily", "timezone": "Europe"}, "^timezone: 'Europe' is not an IANA"),
    ({**TARGET, "every": "500ms"}, "^every: 500 is below the minimum of 1000 ms$"),
    ({**TARGET, "every": "1x"}, "^every: invalid duration '1x'"),
    ({**TARGET, "every": "1s", "cron": "@daily"}, "^cron: give cron or every, not both$"),
    ({**TARGET, "every": "1s", "timezone": "UTC"}, "^timezone: applies to a cron rule only$"),
    ({**TARGET, "delay": 0, "until": 5}, "^until: needs cron or every$"),
    ({**TARGET, "every": "1s", "until": "soon"}, "^until: invalid time 'soon'"),
    ({**TARGET, "every": "1s", "until": 0}, "^until: 1970-01-01T00:00:00.000Z is before the first"),
    ({**TARGET, "every": "1s", "at": 5, "until": 4}, "^until: .* is before the first occurrence"),
    ({**TARGET, "every": "1s", "delay": "1h", "until": 5}, "^until: .* is before the first"),
    (
        {**TARGET, "cron": "61 * * * *", "timezone": "Mars/Olympus"},
        "^timezone: 'Mars/Olympus' is not an IANA .*; cron: '61 ",
    ),
]


# --- the ingest topic: looked at before the first record, never created --------------------------


async def test_a_missing_ingest_topic_is_refused_and_not_created(
    broker: EmbeddedBroker, ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployment's topics on a broker that auto-creates topics, and a mistyped ingest topic
    await create_deployment_topics(broker.bootstrap, ns)
    monkeypatch.setenv("DELAYQ_APP_ID", ns.app_id)
    typo = f"{ns.prefix}-typo-ingest"
    # When the blocking client schedules, and the async client cancels
    queue, async_queue = DelayQueue(broker.bootstrap, typo), AsyncDelayQueue(broker.bootstrap, typo)
    try:
        with pytest.raises(IngestTopicError) as blocking:
            await asyncio.to_thread(queue.delay, b"v", "1m", target=ns.target())
        with pytest.raises(IngestTopicError) as async_:
            await async_queue.cancel("j")
    finally:
        queue.close()
        await async_queue.close()
    # Then both refuse, saying why, and the topic was not created by asking
    for raised in (blocking.value, async_.value):
        assert str(raised).startswith(f"the ingest topic {typo!r} does not exist on the Kafka ")
    assert typo not in await topic_names(broker.bootstrap)


async def test_an_ingest_topic_that_is_not_the_workers_is_refused(
    broker: EmbeddedBroker, ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployment of 4 partitions (its app id in DELAYQ_APP_ID), and a topic of 1
    await create_deployment_topics(broker.bootstrap, ns)
    monkeypatch.setenv("DELAYQ_APP_ID", ns.app_id)
    foreign = ns.target("foreign")
    await create_topics(broker.bootstrap, [foreign], 1)
    queue = AsyncDelayQueue(broker.bootstrap, foreign)
    # When it is given as the ingest topic / Then the client refuses it
    with pytest.raises(
        IngestTopicError, match=rf"^topic '{foreign}' has 1 partitions, the workers"
    ):
        await queue.delay(b"v", "1m", target=ns.target())
    await queue.close()
    # And an ingest topic where no worker of the app id ever ran, and the changelog, likewise
    lonely = AsyncDelayQueue(broker.bootstrap, ns.ingest, app_id=f"{ns.app_id}-other")
    with pytest.raises(IngestTopicError, match=r"^no delayq worker of app id '.*-other' has run"):
        await lonely.start()
    await lonely.close()
    changelog = AsyncDelayQueue(broker.bootstrap, f"{ns.app_id}-jobs-changelog", app_id=ns.app_id)
    with pytest.raises(IngestTopicError, match=r"is delayq's jobs changelog, not its ingest"):
        await changelog.start()
    await changelog.close()


def test_the_ingest_topic_is_not_a_target(closed_port: str) -> None:
    queue = DelayQueue(closed_port, "my-ingest")
    try:
        with pytest.raises(ValueError, match=r"^target: 'my-ingest' is the ingest topic"):
            queue.schedule(b"v", target="my-ingest", delay=0)
    finally:
        queue.close()


@pytest.mark.parametrize(("kwargs", "message"), BAD_SCHEDULES[:12] + BAD_RULES)
async def test_bad_arguments_raise_without_connecting(
    closed_port: str, kwargs: dict[str, Any], message: str
) -> None:
    # Given a client pointed at a closed port: connecting would raise BrokerUnavailable
    queue = AsyncDelayQueue(closed_port, "ingest")
    # When bad arguments are given / Then ValueError, so nothing was even attempted
    with pytest.raises(ValueError, match=message):
        await queue.schedule(**{"value": b"v", **kwargs})
    await queue.close()


def test_bad_client_arguments() -> None:
    with pytest.raises(ValueError, match=r"^ingest_topic: 'bad topic' is not a valid"):
        AsyncDelayQueue("127.0.0.1:1", "bad topic")
    with pytest.raises(ValueError, match=r"^bootstrap_servers: no broker address"):
        AsyncDelayQueue(" , ", "ingest")
    with pytest.raises(ValueError, match=r"^request_timeout: must be positive"):
        DelayQueue("127.0.0.1:1", "ingest", request_timeout=0)
    queue = AsyncDelayQueue("kafka://k1:9092;k2:9093", "ingest")
    assert queue.bootstrap_servers == ["k1:9092", "k2:9093"]


# --- an unreachable broker --------------------------------------------------------------------


async def test_async_client_raises_broker_unavailable_on_a_closed_port(closed_port: str) -> None:
    # Given nothing listening / When scheduling or cancelling / Then BrokerUnavailable, soon
    started = time.monotonic()
    queue = AsyncDelayQueue(closed_port, "ingest", request_timeout=1)
    with pytest.raises(BrokerUnavailable, match=f"cannot reach the Kafka broker at {closed_port}"):
        await queue.schedule(b"v", target="out", delay="1s")
    with pytest.raises(BrokerUnavailable):
        await queue.cancel("j")
    await queue.close()
    assert time.monotonic() - started < UNAVAILABLE_WITHIN_S


async def test_async_client_gives_up_on_a_broker_that_never_answers(silent_broker: str) -> None:
    # Given a port that accepts connections but never answers
    queue = AsyncDelayQueue(silent_broker, "ingest", request_timeout=1)
    started = time.monotonic()
    # When connecting / Then BrokerUnavailable once request_timeout has passed
    with pytest.raises(BrokerUnavailable, match=r"no answer within 1s"):
        await queue.start()
    assert time.monotonic() - started < UNAVAILABLE_WITHIN_S
    await queue.close()


def test_sync_client_raises_broker_unavailable_on_a_closed_port(closed_port: str) -> None:
    # Given nothing listening, and no event loop in this thread
    started = time.monotonic()
    queue = DelayQueue(closed_port, "ingest", request_timeout=1)
    # When scheduling / Then BrokerUnavailable, soon; and the queue can still be closed
    with pytest.raises(BrokerUnavailable, match="cannot reach"):
        queue.schedule(b"v", target="out", delay="1s")
    with pytest.raises(BrokerUnavailable, match="cannot reach"):
        queue.cancel("j")
    queue.close()
    queue.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        queue.cancel("j")
    assert time.monotonic() - started < UNAVAILABLE_WITHIN_S


def test_sync_context_manager_connects_on_enter(closed_port: str) -> None:
    with pytest.raises(BrokerUnavailable), DelayQueue(closed_port, "ingest", request_timeout=1):
        pass


# --- usable from any Python service -----------------------------------------------------------


async def test_a_plain_script_can_use_the_blocking_client(
    broker: EmbeddedBroker, ns: Namespace
) -> None:
    # Given a deployment's topics, and a plain script (no asyncio) using DelayQueue
    await create_deployment_topics(broker.bootstrap, ns)
    script = (
        "import json, sys\n"
        "from app.client import DelayQueue\n"
        f"with DelayQueue({broker.bootstrap!r}, {ns.ingest!r}, app_id={ns.app_id!r}) as queue:\n"
        f"    job = queue.delay(b'from a script', '1h', target={ns.target()!r}, job_id='s1')\n"
        "print(json.dumps({'job_id': job.job_id, 'due_ms': job.due_ms}))\n"
    )
    # When it runs / Then it exits cleanly (the loop thread does not hold it) with the job
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["job_id"] == "s1"


def _imports(path: Path) -> set[str]:
    """Modules imported by ``path``, at any depth (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_client_imports_only_aiokafka_and_light_delayq_modules() -> None:
    stdlib = sys.stdlib_module_names
    client = _imports(ROOT / "app" / "client.py")
    durations = _imports(ROOT / "app" / "durations.py")
    allowed = {"app", "app.names", "app.durations", "app.times", "app.errors", "app.settings"}
    allowed |= {"app.endpoints", "app.outcomes", "app.recurrence", "app.rule_fields"}
    assert {m for m in client if m.split(".")[0] not in stdlib} - {
        "aiokafka",
        "aiokafka.errors",
        "aiokafka.protocol.metadata",
    } <= (allowed)
    endpoints = _imports(ROOT / "app" / "endpoints.py")
    assert {m for m in endpoints if m.split(".")[0] not in stdlib} <= {"app.errors"}
    assert {m for m in durations if m.split(".")[0] not in stdlib} <= {"app.times"}


def test_importing_the_client_loads_neither_faust_nor_worker_settings() -> None:
    # Given a fresh interpreter / When the client (and the CLI) are imported
    heavy = ["faust", "mode", "app.service", "app.settings", "pydantic", "rocksdict"]
    code = f"import sys, app.client, app.cli\nprint([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120, check=False
    )
    # Then none of the worker's modules were loaded
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "[]"
