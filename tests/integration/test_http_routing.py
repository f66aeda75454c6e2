"""Two real workers: every request about a job works on either of them, whoever owns it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from app.api.models import ClusterStatsOut, CompatReply
from app.api.routing import partition_of
from app.embedded import EmbeddedBroker
from app.times import now_ms
from tests.integration.test_http_api import Answer, Api
from tests.support import Namespace, Worker, create_topics, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Cluster:
    ns: Namespace
    workers: list[Worker]
    apis: list[Api]
    #: Active partitions of each worker.
    owned: list[set[int]]

    def id_owned_by(self, index: int, prefix: str) -> str:
        """A job id whose partition worker ``index`` owns."""
        for i in itertools.count():
            candidate = f"{prefix}-{i}"
            if partition_of(candidate.encode(), self.ns.partitions) in self.owned[index]:
                return candidate
        raise AssertionError("unreachable")


def split_between(workers: list[Worker], partitions: int) -> list[set[int]] | None:
    """Each worker's active partitions once they are all ready and cover every partition."""
    owned: list[set[int]] = []
    for worker in workers:
        health = worker.health()
        if health["status"] != "ok" or not health["active_partitions"]:
            return None
        owned.append(set(health["active_partitions"]))
    if sorted(p for o in owned for p in o) != list(range(partitions)):
        return None
    return owned


def start_cluster(broker: EmbeddedBroker, tmp: Path, count: int = 2) -> Cluster:
    ns = Namespace()
    asyncio.run(create_topics(broker.bootstrap, [ns.ingest, ns.fired], ns.partitions))
    workers: list[Worker] = []
    for name in "abc"[:count]:
        worker = Worker(broker.bootstrap, ns, tmp / f"data-{name}", tmp / f"worker-{name}.log")
        workers.append(worker.start().wait_ready())
    wait_for(lambda: split_between(workers, ns.partitions) is not None, "the partitions to split")
    owned = split_between(workers, ns.partitions)
    assert owned is not None
    return Cluster(ns, workers, [Api(w.web_port) for w in workers], owned)


@pytest.fixture(scope="module")
def cluster(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_cluster(broker, tmp_path_factory.mktemp("http-routing"))
    try:
        yield running
    finally:
        for worker in running.workers:
            worker.stop()


def on_all(cluster: Cluster, call: str, job_id: str) -> list[Answer]:
    path = f"/jobs/{quote(job_id, safe='')}"
    return [api.call(call, path) for api in cluster.apis]


def test_get_and_delete_work_from_either_worker(cluster: Cluster) -> None:
    a, b = cluster.apis
    target = cluster.ns.target()
    # Given one job in a partition of each worker, both posted to worker a
    ids = [cluster.id_owned_by(0, "on-a"), cluster.id_owned_by(1, "on-b")]
    for job_id in ids:
        answer = a.post("/jobs", {"id": job_id, "target": target, "delay": "1h", "value": job_id})
        assert answer.status == 201, answer.text
    for job_id in ids:
        b.wait_job(job_id)
    # When each job is read through both workers
    for index, job_id in enumerate(ids):
        answers = on_all(cluster, "GET", job_id)
        # Then both answer 200 with the same job, from the owner's partition
        assert [x.status for x in answers] == [200, 200]
        assert answers[0].json == answers[1].json
        assert answers[0].json["value"] == job_id
        assert answers[0].json["partition"] in cluster.owned[index]
    # And an unknown id is a 404 from either worker, wherever it would live
    for owner in (0, 1):
        unknown = cluster.id_owned_by(owner, "unknown")
        assert [x.status for x in on_all(cluster, "GET", unknown)] == [404, 404]
    # When each job is deleted through the worker that does NOT own it
    assert b.delete(f"/jobs/{ids[0]}").status == 202
    assert a.delete(f"/jobs/{ids[1]}").status == 202
    # Then both are gone, as seen from either worker
    for job_id in ids:
        for api in cluster.apis:
            api.wait_job(job_id, 404)
    assert [x.status for x in on_all(cluster, "DELETE", ids[0])] == [404, 404]


def test_the_list_and_the_cluster_stats_cover_both_workers(cluster: Cluster) -> None:
    a, b = cluster.apis
    target = cluster.ns.target()
    base = now_ms() + 86_400_000
    # Given jobs on both workers' partitions, due in a known order
    ids = [cluster.id_owned_by(i % 2, f"list{i}") for i in range(6)]
    for i, job_id in enumerate(ids):
        assert b.post("/jobs", {"id": job_id, "target": target, "at": base + i}).status == 201
    for job_id in ids:
        a.wait_job(job_id)
    # When either worker lists the jobs
    lists = [api.get(f"/jobs?before={base + 6}&limit=1000").json for api in cluster.apis]
    # Then both see all of them, merged in due order, over all partitions
    for listing in lists:
        mine = [job["id"] for job in listing["jobs"] if job["id"] in ids]
        assert mine == ids
        dues = [job["due_ms"] for job in listing["jobs"]]
        assert dues == sorted(dues)
        assert listing["active_partitions"] == list(range(cluster.ns.partitions))
    assert lists[0] == lists[1]
    # And the limit applies to the merged list
    assert a.get(f"/jobs?before={base + 6}&limit=2").json["jobs"] == lists[0]["jobs"][:2]
    # When the cluster stats are asked from either worker
    for api in cluster.apis:
        stats = ClusterStatsOut.model_validate(api.get("/stats?cluster=1").json)
        # Then there is one entry per worker, with its partitions, and the sums
        assert [set(w.active_partitions) for w in stats.workers] == sorted(cluster.owned, key=min)
        assert stats.total.pending == sum(w.pending for w in stats.workers)
        assert stats.total.pending >= len(ids)
        assert stats.total.counters.scheduled == sum(w.counters.scheduled for w in stats.workers)
    # And the per-worker stats are each worker's own
    for api, owned in zip(cluster.apis, cluster.owned, strict=True):
        assert set(api.get("/stats").json["active_partitions"]) == owned


def test_the_compat_endpoints_route_by_job_id_too(cluster: Cluster) -> None:
    a, b = cluster.apis
    # Given a go-delayqueue job whose partition worker b owns, added through worker a
    job_id = cluster.id_owned_by(1, "compat")
    added = a.post(
        "/delay-queue/api/jobs/add",
        {"id": job_id, "topic": cluster.ns.target(), "delay": 600, "body": "b"},
    )
    assert added.json["code"] == 0
    b.wait_job(job_id)
    # When it is read and removed through worker a
    got = CompatReply.model_validate(a.post("/delay-queue/api/jobs/get", {"job_id": job_id}).json)
    removed = a.post("/delay-queue/api/jobs/remove", {"job_id": job_id}).json
    # Then both reached the owner
    assert got.code == 0
    assert got.data is not None and got.data["id"] == job_id
    assert removed["code"] == 0
    b.wait_job(job_id, 404)


def test_a_dead_owner_gives_503_with_retry_after_until_the_survivor_takes_over(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    cluster = start_cluster(broker, tmp_path)
    try:
        a, _b = cluster.apis
        # Given a job owned by worker b
        job_id = cluster.id_owned_by(1, "survivor")
        body = {"id": job_id, "target": cluster.ns.target(), "delay": "1h", "value": "v"}
        assert a.post("/jobs", body).status == 201
        a.wait_job(job_id)
        # When worker b dies without a goodbye
        cluster.workers[1].kill()
        # Then worker a answers 503 with Retry-After while b's partitions have no live owner
        answer = a.job(job_id)
        assert answer.status == 503, answer.text
        assert int(answer.headers["Retry-After"]) >= 1
        assert answer.json["code"] == 503
        # And once a has taken over b's partitions, a answers for the job from its changelog
        got = a.wait_job(job_id)
        assert got.json["value"] == "v"
        assert got.json["partition"] in cluster.owned[1]
    finally:
        for worker in cluster.workers:
            worker.stop()
