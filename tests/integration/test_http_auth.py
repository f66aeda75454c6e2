"""With DELAYQ_API_TOKEN set, changing jobs over HTTP needs the bearer token; reading does not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.api.routing import partition_of
from app.embedded import EmbeddedBroker
from tests.integration.test_http_api import Api, start_module_worker
from tests.support import Worker, wait_for

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def two_workers(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Worker, Worker]]:
    tmp: Path = tmp_path_factory.mktemp("http-auth")
    ns, a = start_module_worker(broker, tmp, "a", DELAYQ_API_TOKEN=TOKEN)
    b = Worker(broker.bootstrap, ns, tmp / "data-b", tmp / "worker-b.log")
    b.start({"DELAYQ_API_TOKEN": TOKEN}).wait_ready()

    def split() -> bool:
        pa = set(a.health().get("active_partitions", []))
        pb = set(b.health().get("active_partitions", []))
        return bool(pa) and bool(pb) and not pa & pb

    wait_for(split, "both workers to own partitions")
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


def test_changes_need_the_token_and_reads_do_not(two_workers: tuple[Worker, Worker]) -> None:
    a, b = two_workers
    job = {"id": "auth-1", "target": "auth-out", "delay": "1h"}
    # Given no token or a wrong one, when a job is scheduled or removed, then 401
    for api in (Api(a.web_port), Api(a.web_port, token="wrong")):
        answer = api.post("/jobs", job)
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert api.delete("/jobs/auth-1").status == 401
        assert (
            api.post("/delay-queue/api/jobs/add", {"topic": "t", "delay": 5, "body": "b"}).json[
                "code"
            ]
            == 401
        )
    # With the token it works
    assert Api(a.web_port, token=TOKEN).post("/jobs", job).status == 201
    # And reading needs none
    Api(b.web_port).wait_job("auth-1")


def test_a_cancel_routed_to_the_other_worker_carries_the_token(
    two_workers: tuple[Worker, Worker],
) -> None:
    a, b = two_workers
    # Given a job owned by worker b
    owned_by_b = set(b.health()["active_partitions"])
    job_id = next(
        f"routed-{i}" for i in range(1000) if partition_of(f"routed-{i}".encode(), 4) in owned_by_b
    )
    api_a = Api(a.web_port, token=TOKEN)
    assert api_a.post("/jobs", {"id": job_id, "target": "auth-out", "delay": "1h"}).status == 201
    api_a.wait_job(job_id)
    # When worker a is asked to cancel it, then b accepts the forwarded request
    assert api_a.delete(f"/jobs/{job_id}").status == 202
    api_a.wait_job(job_id, status=404)
