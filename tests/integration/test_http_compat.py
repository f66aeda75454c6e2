"""go-delayqueue's HTTP API on a real worker, driven with the request bodies of its README."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.api.models import CompatJobOut, CompatReply
from app.embedded import EmbeddedBroker
from app.times import now_ms
from tests.integration.test_http_api import Api, Setup, has_key, start_module_worker
from tests.support import wait_for

pytestmark = pytest.mark.integration

ADD = "/delay-queue/api/jobs/add"
REMOVE = "/delay-queue/api/jobs/remove"
GET = "/delay-queue/api/jobs/get"
#: The seed's README examples, verbatim.
SEED_ADD = {"topic": "order", "delay": 3600, "body": '{"uid": 10829378,"created": 1498657365 }'}
SEED_REMOVE = {"job_id": "15702398321"}


@pytest.fixture(scope="module")
def setup(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    ns, worker = start_module_worker(broker, tmp_path_factory.mktemp("http-compat"))
    try:
        yield Setup(ns, broker.bootstrap, worker, Api(worker.web_port))
    finally:
        worker.stop()


def reply(api: Api, path: str, body: object = None, *, raw: bytes | None = None) -> CompatReply:
    answer = api.post(path, body, raw=raw)
    # go-delayqueue answers HTTP 200 with its own code, whatever happened
    assert answer.status == 200, answer.text
    return CompatReply.model_validate(answer.json)


def test_the_seed_add_get_remove_cycle(setup: Setup) -> None:
    api = setup.api
    # Given a job added with the seed's own request body
    before = now_ms()
    added = reply(api, ADD, SEED_ADD)
    assert (added.code, added.message) == (0, "ok")
    assert added.data is not None
    job_id = added.data["job_id"]
    # When it is read with the seed's get body
    wait_for(lambda: reply(api, GET, {"job_id": job_id}).data is not None, "the job to be pending")
    got = reply(api, GET, {"job_id": job_id})
    # Then it is the seed's job shape: topic, id, due time in epoch seconds, delay, body
    assert got.data is not None
    job = CompatJobOut.model_validate(got.data)
    assert (job.topic, job.id, job.body) == ("order", job_id, SEED_ADD["body"])
    assert before // 1000 + 3600 <= job.exec_time <= now_ms() // 1000 + 3600
    assert 3590 <= job.delay <= 3600
    # And the seed's GET-with-query form answers the same
    query = CompatReply.model_validate(api.get(f"{GET}?job_id={job_id}").json)
    assert query.data == got.data
    # When it is removed
    removed = reply(api, REMOVE, {"job_id": job_id})
    # Then removal succeeds and get then answers the seed's README form of an absent job
    assert (removed.code, removed.data) == (0, None)
    wait_for(lambda: reply(api, GET, {"job_id": job_id}).data is None, "the job to be gone")
    gone = reply(api, GET, {"job_id": job_id})
    assert (gone.code, gone.data) == (0, None)
    assert "not found" in gone.message
    # And removing an unknown job (the seed's README example) is a success, as there
    assert reply(api, REMOVE, SEED_REMOVE).code == 0


def test_a_compat_job_is_forwarded_with_its_body_after_its_delay(setup: Setup) -> None:
    api, target = setup.api, setup.ns.target("compat")
    # Given a job with an id, due in one second
    before = now_ms()
    added = reply(api, ADD, {"id": "c-1", "topic": target, "delay": 1, "body": "hi"})
    assert added.code == 0
    assert added.data == {"job_id": "c-1"}
    # Then the body arrives on the topic, keyed by the id, not before the delay
    records = setup.collect([target], has_key(b"c-1"))
    record = next(r for r in records if r.key == b"c-1")
    assert record.value == b"hi"
    assert record.timestamp >= before + 1_000


def test_an_absent_job_is_code_0_with_null_data_as_the_seed_documents(setup: Setup) -> None:
    # go-delayqueue's README: "Job不存在返回值" {"code": 0, "message": ..., "data": null}
    for answer in (
        setup.api.post(GET, {"job_id": "never-added"}),
        setup.api.get(f"{GET}?job_id=never-added"),
    ):
        assert answer.status == 200, answer.text
        assert answer.json == {
            "code": 0,
            "message": "job not found (no pending job 'never-added')",
            "data": None,
        }


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"delay": 10, "body": "x"}, 400),  # no topic
        ({"topic": "", "delay": 10}, 400),
        ({"topic": "has space", "delay": 10}, 400),
        ({"topic": "order"}, 400),  # no delay
        ({"topic": "order", "delay": 0}, 400),  # Go's `binding:"required"` refuses 0
        ({"topic": "order", "delay": "10"}, 400),
        ({"topic": "order", "delay": 1.5}, 400),
        ({"topic": "order", "delay": 10, "body": 5}, 400),
        ({"topic": "order", "delay": -1}, 10001),
        ({"topic": "order", "delay": (1 << 31) + 1}, 10001),
        ({"topic": "INGEST", "delay": 10}, 400),
        ([1], 400),
    ],
)
def test_bad_adds_get_the_seed_error_codes(setup: Setup, body: object, code: int) -> None:
    if isinstance(body, dict) and body.get("topic") == "INGEST":
        body = {**body, "topic": setup.ns.ingest}
    answer = reply(setup.api, ADD, body)
    assert answer.code == code, answer.message
    assert answer.data is None
    assert answer.message


def test_malformed_requests_are_code_400(setup: Setup) -> None:
    api = setup.api
    for path in (ADD, REMOVE, GET):
        assert reply(api, path, raw=b"{not json").code == 400
        assert reply(api, path, {}).code == 400
    assert reply(api, GET, {"job_id": 15702398321}).code == 400
    assert reply(api, REMOVE, {"job_id": "x" * 1025}).code == 400
