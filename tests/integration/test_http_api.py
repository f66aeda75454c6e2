"""The native HTTP API of one real worker: schedule, read, list, cancel, stats, metrics, docs.

One worker serves the whole module (jobs of different tests have different ids; counters are
compared before and after). Routing between two workers: ``test_http_routing``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiokafka import ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families

from app.api.models import ClusterStatsOut, JobListOut, JobOut, ScheduledOut, StatsOut
from app.embedded import EmbeddedBroker
from app.times import now_ms
from tests.support import Kafka, Namespace, Worker, create_topics, headers_of, wait_for

pytestmark = pytest.mark.integration

Records = list[ConsumerRecord[bytes, bytes]]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Api:
    """HTTP calls to one worker (blocking: the worker is another process)."""

    port: int
    token: str | None = None

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        timeout: float = 30.0,
    ) -> Answer:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {self.token}"} if self.token else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Answer(response.status, dict(response.headers), response.read().decode())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, dict(exc.headers), exc.read().decode())

    def get(self, path: str) -> Answer:
        return self.call("GET", path)

    def post(self, path: str, body: Any = None, *, raw: bytes | None = None) -> Answer:
        return self.call("POST", path, body, raw=raw)

    def delete(self, path: str) -> Answer:
        return self.call("DELETE", path)

    def job(self, job_id: str) -> Answer:
        return self.get(f"/jobs/{quote(job_id, safe='')}")

    def wait_job(self, job_id: str, status: int = 200) -> Answer:
        """Wait until ``GET /jobs/{id}`` answers ``status`` (the agent applies commands async)."""
        answers: list[Answer] = []

        def done() -> bool:
            answers.append(self.job(job_id))
            return answers[-1].status == status

        wait_for(done, f"GET /jobs/{job_id} -> {status}")
        return answers[-1]


@dataclass
class Setup:
    ns: Namespace
    bootstrap: str
    worker: Worker
    api: Api

    def collect(self, topics: list[str], until: Callable[[Records], bool]) -> Records:
        """Read ``topics`` from the start until ``until(records)`` holds."""

        async def read() -> Records:
            return await Kafka(self.bootstrap).collect(topics, until)

        return asyncio.run(read())


def start_module_worker(
    broker: EmbeddedBroker, tmp: Path, name: str = "a", **env: str
) -> tuple[Namespace, Worker]:
    ns = Namespace()
    asyncio.run(create_topics(broker.bootstrap, [ns.ingest, ns.fired], ns.partitions))
    worker = Worker(broker.bootstrap, ns, tmp / f"data-{name}", tmp / f"worker-{name}.log")
    worker.start(env).wait_ready()
    wait_for(lambda: worker.health()["status"] == "ok", "the worker to be healthy")
    return ns, worker


@pytest.fixture(scope="module")
def setup(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    ns, worker = start_module_worker(broker, tmp_path_factory.mktemp("http-api"))
    try:
        yield Setup(ns, broker.bootstrap, worker, Api(worker.web_port))
    finally:
        worker.stop()


def has_key(key: bytes) -> Callable[[Records], bool]:
    return lambda records: any(r.key == key for r in records)


# --- POST /jobs -------------------------------------------------------------------------------


def test_a_job_scheduled_with_a_delay_is_forwarded_at_the_returned_due_time(setup: Setup) -> None:
    api, target = setup.api, setup.ns.target("delay")
    # Given a job posted with a duration string, a key, a text value and a header
    before = now_ms()
    answer = api.post(
        "/jobs",
        {
            "id": "d-1",
            "target": target,
            "delay": "1.5s",
            "key": "order-1",
            "value": "close order 1",
            "headers": {"trace": "t-1"},
        },
    )
    after = now_ms()
    # Then the broker has acknowledged it and the exact due time is returned
    assert answer.status == 201, answer.text
    created = ScheduledOut.model_validate(answer.json)
    assert created.id == "d-1"
    assert before + 1_500 <= created.due_ms <= after + 1_500
    assert created.due_at.endswith("Z")
    # And it arrives on the target, not early, with the promised key, value and headers
    records = setup.collect([target], has_key(b"order-1"))
    record = next(r for r in records if r.key == b"order-1")
    assert record.value == b"close order 1"
    assert headers_of(record) == {
        "trace": b"t-1",
        "delayq-job-id": b"d-1",
        "delayq-due-ms": str(created.due_ms).encode(),
    }
    assert record.timestamp >= created.due_ms


def test_a_job_at_an_iso_time_keeps_binary_key_value_and_headers(setup: Setup) -> None:
    api = setup.api
    value = b"\x00\xff\xfe binary"
    # Given a job due at an ISO-8601 time with an offset, binary key, value and header
    answer = api.post(
        "/jobs",
        {
            "id": "iso-1",
            "target": setup.ns.target(),
            "at": "2100-05-01T14:00:00.250+02:00",
            "key_base64": base64.b64encode(b"\xffkey").decode(),
            "value_base64": base64.b64encode(value).decode(),
            "headers": [
                {"name": "bin", "value_base64": base64.b64encode(b"\xff").decode()},
                {"name": "text", "value": "é"},
                {"name": "text", "value": "twice"},
            ],
        },
    )
    assert answer.status == 201, answer.text
    # Then the due time is exactly that moment
    assert answer.json["due_ms"] == 4_112_856_000_250
    assert answer.json["due_at"] == "2100-05-01T12:00:00.250Z"
    # And reading it back shows text where it is UTF-8 and base64 where it is not
    job = JobOut.model_validate(api.wait_job("iso-1").json)
    assert job.status == "pending"
    assert (job.id, job.target, job.due_ms) == ("iso-1", setup.ns.target(), 4_112_856_000_250)
    assert (job.key, job.key_base64) == (None, base64.b64encode(b"\xffkey").decode())
    assert (job.value, job.value_base64) == (None, base64.b64encode(value).decode())
    assert [h.model_dump(exclude_none=True) for h in job.headers] == [
        {"name": "bin", "value_base64": "/w=="},
        {"name": "text", "value": "é"},
        {"name": "text", "value": "twice"},
    ]
    assert job.partition == answer.json["partition"]


def test_a_job_without_id_gets_one_and_replacing_by_id_keeps_one_job(setup: Setup) -> None:
    api, target = setup.api, setup.ns.target()
    # Given a job posted without an id
    first = api.post("/jobs", {"target": target, "delay": 3_600_000})
    assert first.status == 201, first.text
    job_id = first.json["id"]
    assert job_id
    # When it is posted again with that id, a later time and a value
    second = api.post("/jobs", {"id": job_id, "target": target, "delay": "2h", "value": "v2"})
    assert second.status == 201
    # Then the job reads back as the replacement
    api.wait_job(job_id)
    wait_for(lambda: api.job(job_id).json.get("value") == "v2", "the replacement")
    assert api.job(job_id).json["due_ms"] == second.json["due_ms"]


BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("no target", {"id": "bad-1", "delay": 1000, "value": "BAD"}, "target"),
    ("bad topic", {"id": "bad-2", "target": "no spaces", "delay": 1000, "value": "BAD"}, "target"),
    ("no time", {"id": "bad-3", "target": "t", "value": "BAD"}, "delay"),
    ("both times", {"id": "bad-4", "target": "t", "delay": 1, "at": 1, "value": "BAD"}, "delay"),
    ("unitless", {"id": "bad-5", "target": "t", "delay": "30", "value": "BAD"}, "delay"),
    ("negative", {"id": "bad-6", "target": "t", "delay": -5, "value": "BAD"}, "delay"),
    ("bool delay", {"id": "bad-7", "target": "t", "delay": True, "value": "BAD"}, "delay"),
    ("naive at", {"id": "bad-8", "target": "t", "at": "2030-01-01T00:00:00"}, "at"),
    ("year 10000", {"id": "bad-9", "target": "t", "delay": "9000000d"}, "delay"),
    (
        "bad base64",
        {"id": "bad-10", "target": "t", "delay": 1, "value_base64": "%%"},
        "value_base64",
    ),
    (
        "two values",
        {"id": "bad-11", "target": "t", "delay": 1, "value": "a", "value_base64": ""},
        "value",
    ),
    ("empty id", {"id": "", "target": "t", "delay": 1, "value": "BAD"}, "id"),
    ("long id", {"id": "x" * 1025, "target": "t", "delay": 1, "value": "BAD"}, "id"),
    ("number id", {"id": 7, "target": "t", "delay": 1, "value": "BAD"}, "id"),
    (
        "reserved header",
        {"id": "bad-12", "target": "t", "delay": 1, "headers": {"delayq-x": "1"}},
        "headers.0.name",
    ),
    ("unknown field", {"id": "bad-13", "target": "t", "delay": 1, "dealy": 5}, "dealy"),
    ("internal target", {"id": "bad-14", "target": "INGEST", "delay": 1, "value": "BAD"}, "target"),
    ("bad cron", {"id": "bad-15", "target": "t", "cron": "61 * * * *", "value": "BAD"}, "cron"),
    ("fast", {"id": "bad-16", "target": "t", "every": "500ms", "value": "BAD"}, "every"),
    ("ends first", {"id": "bad-17", "target": "t", "every": "1m", "until": 0}, "until"),
]


def test_bad_input_is_rejected_field_by_field_and_nothing_is_produced(setup: Setup) -> None:
    api = setup.api
    # When each bad body is posted
    for name, body, field in BAD_BODIES:
        if body.get("target") == "INGEST":
            body = {**body, "target": setup.ns.ingest}
        answer = api.post("/jobs", body)
        # Then it is a 422 naming the field, in the one error envelope
        assert answer.status == 422, (name, answer.text)
        assert answer.json["code"] == 422
        assert field in [e["field"] for e in answer.json["errors"]], (name, answer.json)
        assert all(e["message"] for e in answer.json["errors"])
    # And bodies that are not a JSON object are refused as well
    assert api.post("/jobs", raw=b'{"target": ').status == 400
    assert api.post("/jobs", raw=b"").status == 400
    assert api.post("/jobs", raw=b"[1, 2]").status == 422
    # And none of them reached the ingest topic (a good job written after them is the marker)
    assert api.post("/jobs", {"id": "marker", "target": "t", "delay": "1h"}).status == 201
    ingest = setup.collect([setup.ns.ingest], has_key(b"marker"))
    assert not [r for r in ingest if (r.key or b"").startswith(b"bad-") or r.value == b"BAD"]


# --- GET and DELETE /jobs/{id} ----------------------------------------------------------------


def test_get_and_delete_a_pending_job(setup: Setup) -> None:
    api, target = setup.api, setup.ns.target("cancel")
    # Given a pending job with an id that needs URL-encoding, and a marker job due after it
    job_id = "user/7 café?"
    due = now_ms() + 2_000
    assert (
        api.post("/jobs", {"id": job_id, "target": target, "at": due, "value": "x"}).status == 201
    )
    assert (
        api.post("/jobs", {"id": "m", "target": target, "at": due + 500, "key": "marker"}).status
        == 201
    )
    # When it is read
    job = api.wait_job(job_id).json
    # Then it is pending, with its id and due time
    assert (job["id"], job["due_ms"], job["status"], job["value"]) == (job_id, due, "pending", "x")
    # When it is deleted
    answer = api.delete(f"/jobs/{quote(job_id, safe='')}")
    # Then the cancel is accepted, the job disappears and is never forwarded
    assert answer.status == 202, answer.text
    assert answer.json == {"id": job_id, "status": "cancelling"}
    api.wait_job(job_id, 404)
    records = setup.collect([target], has_key(b"marker"))
    assert [r.key for r in records] == [b"marker"]
    # And deleting again, or reading or deleting an unknown job, is a 404 in the error envelope
    gone = api.delete(f"/jobs/{quote(job_id, safe='')}")
    for answer in (gone, api.job("never"), api.delete("/jobs/never")):
        assert answer.status == 404
        assert answer.json["code"] == 404
        assert "no pending job" in answer.json["message"]
    # And an id longer than the contract allows is a 422
    assert api.job("x" * 1025).status == 422


def test_a_delete_that_waits_answers_who_won(setup: Setup) -> None:
    api, target = setup.api, setup.ns.target("who-won")
    # Given a job due in an hour, and one due at once
    later, now = now_ms() + 3_600_000, now_ms()
    assert api.post("/jobs", {"id": "w-later", "target": target, "at": later}).status == 201
    assert api.post("/jobs", {"id": "w-now", "target": target, "at": now, "key": "k"}).status == 201
    setup.collect([target], has_key(b"k"))
    # When each is deleted with ?wait=true, and an id never scheduled too
    cancelled = api.delete("/jobs/w-later?wait=true")
    too_late = api.delete("/jobs/w-now?wait=true")
    unknown = api.delete("/jobs/w-never?wait=true")
    # Then the pending one was cancelled, with its due time
    assert cancelled.status == 200, cancelled.text
    assert (cancelled.json["status"], cancelled.json["due_ms"]) == ("cancelled", later)
    # And the forwarded one was too late: its due time and when it was forwarded
    assert too_late.status == 200, too_late.text
    assert too_late.json["status"] == "too_late"
    assert too_late.json["due_ms"] == now <= too_late.json["forwarded_ms"]
    # And the unknown id is said to be unknown
    assert unknown.json == {"id": "w-never", "status": "unknown"}
    # And a wait that is neither true nor false is a 422 naming the field
    bad = api.delete("/jobs/w-later?wait=soon")
    assert bad.status == 422
    assert "wait" in bad.text


# --- recurring jobs ---------------------------------------------------------------------------


def due_of(record: ConsumerRecord[bytes, bytes]) -> int:
    return int(headers_of(record)["delayq-due-ms"])


def test_a_recurring_job_fires_at_each_occurrence_until_it_is_deleted(setup: Setup) -> None:
    api, target = setup.api, setup.ns.target("every")
    asyncio.run(create_topics(setup.bootstrap, [target], 1))  # forwards in the order sent
    # Given a job posted to recur every second, with no delay or at
    before = now_ms()
    answer = api.post("/jobs", {"id": "every-1", "target": target, "every": "1s", "value": "t"})
    after = now_ms()
    # Then its first occurrence is one interval after now
    assert answer.status == 201, answer.text
    first = answer.json["due_ms"]
    assert before + 1_000 <= first <= after + 1_000

    def forwards(records: Records) -> list[ConsumerRecord[bytes, bytes]]:
        return [r for r in records if headers_of(r)["delayq-job-id"] == b"every-1"]

    # When three of its occurrences have been forwarded
    fired = forwards(setup.collect([target], lambda records: len(forwards(records)) >= 3))
    # Then each carries its own due time, on the series (a worker lagging by an interval sends
    # only the latest occurrence due), and none came before it
    dues = [due_of(r) for r in fired]
    assert dues == sorted(set(dues)) and dues[0] >= first, dues
    assert all((due - first) % 1_000 == 0 for due in dues), dues
    assert all(r.timestamp >= due_of(r) and r.value == b"t" for r in fired)

    # And GET shows the rule and the next occurrence (or the last one while it is in flight)
    job = api.job("every-1").json
    assert job["rule"] == {
        "cron": None,
        "timezone": None,
        "every_ms": 1_000,
        "until_ms": None,
        "description": "every 1 s",
    }
    assert job["due_ms"] >= dues[-1] and (job["due_ms"] - first) % 1_000 == 0, job

    # And so does the list (which leaves a job out while it is in flight: waited for)
    def listed() -> list[Any]:
        jobs = api.get("/jobs?limit=1000").json["jobs"]
        return [j["rule"] for j in jobs if j["id"] == "every-1"]

    wait_for(lambda: listed() == [job["rule"]], "every-1 to be listed with its rule")

    # When it is deleted (whether an occurrence is in flight or not)
    deleted = api.delete("/jobs/every-1")
    acknowledged = now_ms()
    assert deleted.status == 202, deleted.text
    api.wait_job("every-1", 404)
    # Then once a marker due after its next would-be occurrence is forwarded ...
    marker = now_ms() + 1_100
    assert api.post("/jobs", {"target": target, "at": marker, "key": "every-end"}).status == 201
    records = setup.collect([target], has_key(b"every-end"))
    # ... at most the occurrence in flight at the delete came after its acknowledgement
    late = [r for r in forwards(records) if r.timestamp > acknowledged]
    assert len(late) <= 1, [due_of(r) for r in late]


# --- GET /jobs --------------------------------------------------------------------------------


def test_the_list_is_earliest_first_bounded_by_before_and_limit(setup: Setup) -> None:
    api, target = setup.api, setup.ns.target()
    # Given five jobs due far in the future (later than any other test's), in shuffled order
    base = 4_200_000_000_000
    for i in (3, 0, 4, 1, 2):
        body = {"id": f"list-{i}", "target": target, "at": base + i * 1_000}
        assert api.post("/jobs", body).status == 201
    for i in range(5):
        api.wait_job(f"list-{i}")
    # When the jobs due before the fourth are listed
    answer = api.get(f"/jobs?before={base + 3_000}&limit=1000")
    assert answer.status == 200, answer.text
    listing = JobListOut.model_validate(answer.json)
    # Then they come earliest first, ours last, and none is due at or after `before`
    dues = [job.due_ms for job in listing.jobs]
    assert dues == sorted(dues)
    assert [job.id for job in listing.jobs][-3:] == ["list-0", "list-1", "list-2"]
    assert all(due < base + 3_000 for due in dues)
    assert listing.count == len(listing.jobs)
    assert listing.active_partitions == list(range(setup.ns.partitions))
    # And an ISO `before` means the same
    iso = api.get("/jobs?before=2103-02-04T02:40:03Z&limit=1000").json  # base + 3 s
    assert [j["id"] for j in iso["jobs"]] == [j.id for j in listing.jobs]
    # And the limit keeps the earliest ones
    limited = api.get("/jobs?limit=2").json
    everything = api.get("/jobs?limit=1000").json
    assert limited["count"] == 2
    assert limited["jobs"] == everything["jobs"][:2]
    assert everything["jobs"][-5:] == [j for j in everything["jobs"] if j["id"].startswith("list-")]
    # And bad query parameters are 422s naming the parameter
    for query, field in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("before=soon", "before"),
    ]:
        answer = api.get(f"/jobs?{query}")
        assert answer.status == 422, query
        assert [e["field"] for e in answer.json["errors"]] == [field]


# --- /stats, /metrics, /health, /openapi.json ----------------------------------------------------


def test_stats_count_what_happened_and_report_lateness(setup: Setup) -> None:
    api, target = setup.api, setup.ns.target("stats")
    before = StatsOut.model_validate(api.get("/stats").json)
    # When a job is scheduled due now, forwarded, and another one scheduled far ahead
    assert (
        api.post("/jobs", {"id": "s-1", "target": target, "delay": 0, "value": "x"}).status == 201
    )
    assert api.post("/jobs", {"id": "s-2", "target": target, "delay": "1d"}).status == 201
    setup.collect([target], has_key(b"s-1"))
    api.wait_job("s-2")

    def counted() -> bool:
        now = api.get("/stats").json
        return (
            now["counters"]["fired"] > before.counters.fired
            and now["counters"]["removed"] > before.counters.removed
        )

    wait_for(counted, "the forward to be counted")
    after = StatsOut.model_validate(api.get("/stats").json)
    # Then the counters moved, pending is O(1)-counted, lateness has samples in order
    assert after.counters.scheduled >= before.counters.scheduled + 2
    assert after.pending >= 1
    assert after.worker == f"http://127.0.0.1:{setup.worker.web_port}"
    assert after.active_partitions == list(range(setup.ns.partitions))
    lateness = after.lateness_ms
    assert lateness.samples >= 1
    assert lateness.p50 is not None and lateness.max is not None
    assert 0 <= lateness.p50 <= (lateness.p90 or 0) <= (lateness.p99 or 0) <= lateness.max
    # And the cluster view of a one-worker cluster is that worker plus the same total
    cluster = ClusterStatsOut.model_validate(api.get("/stats?cluster=1").json)
    assert [w.worker for w in cluster.workers] == [after.worker]
    assert cluster.total.pending == cluster.workers[0].pending
    assert cluster.total.counters == cluster.workers[0].counters


def test_metrics_are_prometheus_text_read_from_the_engine(setup: Setup) -> None:
    api = setup.api
    # Given at least one job pending
    assert api.post("/jobs", {"id": "metrics-1", "target": "t", "delay": "1d"}).status == 201
    api.wait_job("metrics-1")
    # When Prometheus scrapes
    answer = api.get("/metrics")
    # Then the text format parses, with counters, gauges and the lateness summary
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    for counter in ("scheduled", "cancelled", "fired", "dead_lettered", "forward_failures"):
        family = families[f"delayq_{counter}"]
        assert family.type == "counter"
        assert family.samples[0].name == f"delayq_{counter}_total"
    stats = api.get("/stats").json
    assert families["delayq_scheduled"].samples[0].value >= 1
    assert families["delayq_pending_jobs"].type == "gauge"
    assert families["delayq_pending_jobs"].samples[0].value == stats["pending"]
    assert families["delayq_oldest_overdue_seconds"].samples[0].value >= 0
    assert families["delayq_ready"].samples[0].value == 1
    summary = families["delayq_forward_lateness_seconds"]
    assert summary.type == "summary"
    names = {(s.name, s.labels.get("quantile")) for s in summary.samples}
    assert {("delayq_forward_lateness_seconds", q) for q in ("0.5", "0.9", "0.99")} <= names
    count = next(s for s in summary.samples if s.name.endswith("_count"))
    assert count.value == families["delayq_fired"].samples[0].value


def test_health_and_the_openapi_document(setup: Setup) -> None:
    api = setup.api
    health = api.get("/health")
    assert health.status == 200
    assert health.json["status"] == "ok"
    assert health.json["active_partitions"] == list(range(setup.ns.partitions))
    doc = api.get("/openapi.json")
    assert doc.status == 200
    spec = doc.json
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {
        "/jobs",
        "/jobs/{job_id}",
        "/stats",
        "/metrics",
        "/health",
        "/openapi.json",
        "/delay-queue/api/jobs/add",
        "/delay-queue/api/jobs/remove",
        "/delay-queue/api/jobs/get",
    }
    assert "ScheduleIn" in spec["components"]["schemas"]
