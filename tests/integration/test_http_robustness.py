"""The HTTP API of one real worker under hostile input: clear 4xx answers, never a 5xx.

Malformed JSON, wrong types, bodies larger than the web server takes (aiohttp's
``client_max_size``: 2 x ``DELAYQ_MAX_FORWARD_BYTES`` + 64 KiB, about 2 MB by default), unknown
routes, and clients that send half a request and stall. A rejected request must leave no trace:
the ingest topic holds as many commands afterwards as before (counted up to a sentinel record
per partition, so the count never depends on a sleep).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from app.embedded import EmbeddedBroker
from app.names import HEADER_MOVED_FROM
from tests.integration.test_http_api import Answer, Api, Setup, start_module_worker
from tests.support import Kafka, create_topics
from tests.unit.api.test_models import JARGON

pytestmark = pytest.mark.integration

#: Larger than the worker's client_max_size (2 * 1_000_000 + 65_536 bytes by default).
OVERSIZED = 3_000_000
SENTINEL = b"robustness-sentinel-"


@pytest.fixture(scope="module")
def setup(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    ns, worker = start_module_worker(broker, tmp_path_factory.mktemp("http-robustness"))
    asyncio.run(create_topics(broker.bootstrap, [ns.target()], 1))
    try:
        yield Setup(ns, broker.bootstrap, worker, Api(worker.web_port))
    finally:
        worker.stop()


def moved(record: Any) -> bool:
    """Whether an ingest record is a command's copy on its home partition (app/moving.py)."""
    return any(name == HEADER_MOVED_FROM for name, _value in record.headers)


def ingest_commands(setup: Setup) -> int:
    """Records on the ingest topic, sentinels left out.

    A sentinel (a cancel of an unknown id: harmless) goes to every partition first; reading each
    partition up to its sentinel sees every record written before, without waiting for a
    quiet period.
    """
    tag = SENTINEL + uuid.uuid4().hex.encode()
    partitions = setup.ns.partitions

    async def count() -> int:
        kafka = Kafka(setup.bootstrap)
        await kafka.start()
        try:
            for partition in range(partitions):
                await kafka.send(setup.ns.ingest, tag, None, partition=partition)
            # Written as they are: the worker moves most to their home partition (app/moving.py).
            records = await kafka.collect(
                [setup.ns.ingest],
                lambda rs: sum(r.key == tag for r in rs if not moved(r)) == partitions,
            )
        finally:
            await kafka.stop()
        written = [r for r in records if not moved(r)]
        assert sum(r.key == tag for r in written) == partitions, "sentinels not read back"
        return sum(1 for r in written if not (r.key or b"").startswith(SENTINEL))

    return asyncio.run(count())


def raw_request(port: int, path: str, body: bytes, *, chunked: bool) -> Answer:
    """POST ``body`` over a fresh connection (``chunked`` or with a Content-Length).

    A reset while the body is still being sent is fine: the server may answer early and close;
    that answer is read.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/json")
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        else:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            step = 65_536
            for start in range(0, len(body), step):
                part = body[start : start + step]
                conn.send(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            if chunked:
                conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: read that answer
        response = conn.getresponse()
        return Answer(
            response.status, dict(response.headers), response.read().decode(errors="replace")
        )
    finally:
        conn.close()


def assert_error(answer: Answer, status: int) -> dict[str, Any]:
    """A native error answer: ``status``, JSON ``{"code": status, "message": ...}``."""
    assert answer.status == status, (answer.status, answer.text[:300])
    assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
    body: dict[str, Any] = answer.json
    assert body["code"] == status and body["message"].strip(), body
    assert set(body) <= {"code", "message", "errors"}, body
    return body


def assert_compat_error(answer: Answer, status: int) -> dict[str, Any]:
    """A go-delayqueue error answer: ``status``, ``{"code": status, "message", "data": null}``."""
    assert answer.status == status, (answer.status, answer.text[:300])
    assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
    body: dict[str, Any] = answer.json
    assert set(body) == {"code", "message", "data"}, body
    assert (body["code"], body["data"]) == (status, None) and body["message"].strip(), body
    return body


def assert_family_error(path: str, answer: Answer, status: int) -> dict[str, Any]:
    """The error envelope of ``path``'s family: go-delayqueue's under /delay-queue/."""
    if path.startswith("/delay-queue/"):
        return assert_compat_error(answer, status)
    return assert_error(answer, status)


# --- malformed and mistyped requests ------------------------------------------------------------

NOT_JSON = [
    b"",
    b"not json",
    b"{",
    b'{"target": "t",}',
    b"\xff\xfe\x00\x01",
    b"[" * 100_000,  # nesting deeper than the parser's recursion limit
    b'{"delay": 1' + b"0" * 5_000 + b"}",  # beyond int()'s 4300-digit limit
]

#: (body, field named in the 422's errors)
MISTYPED: list[tuple[Any, str]] = [
    ([], "body"),
    (None, "body"),
    (123, "body"),
    ("a string", "body"),
    ({"target": 5, "delay": 1}, "target"),
    ({"target": ["t"], "delay": 1}, "target"),
    ({"delay": 1}, "target"),
    ({"target": "t", "delay": [1]}, "delay"),
    ({"target": "t", "delay": {"ms": 1}}, "delay"),
    ({"target": "t", "delay": True}, "delay"),
    ({"target": "t", "delay": -1}, "delay"),
    ({"target": "t", "delay": "soon"}, "delay"),
    ({"target": "t", "delay": 1e300}, "delay"),
    ({"target": "t", "at": 1.5}, "at"),
    ({"target": "t", "at": "tomorrow"}, "at"),
    ({"target": "t", "at": 10**30}, "at"),
    ({"target": "t"}, "delay"),
    ({"target": "t", "delay": 1, "at": 1}, "delay"),
    ({"target": "t", "delay": 1, "headers": "x"}, "headers"),
    ({"target": "t", "delay": 1, "headers": [{"name": 1}]}, "headers.0.name"),
    ({"target": "t", "delay": 1, "headers": [{"name": "delayq-target", "value": "x"}]}, "headers"),
    ({"target": "t", "delay": 1, "headers": {"a": 5}}, "headers.0.value"),
    ({"target": "t", "delay": 1, "value": 5}, "value"),
    ({"target": "t", "delay": 1, "value": "a", "value_base64": "YQ=="}, "value"),
    ({"target": "t", "delay": 1, "value_base64": "!!"}, "value_base64"),
    ({"target": "t", "delay": 1, "key_base64": 7}, "key_base64"),
    ({"target": "t", "delay": 1, "id": ""}, "id"),
    ({"target": "t", "delay": 1, "id": "x" * 1_025}, "id"),
    ({"target": "t", "delay": 1, "id": 42}, "id"),
    ({"target": "bad topic", "delay": 1}, "target"),
    ({"target": "t" * 250, "delay": 1}, "target"),
    ({"target": "t", "delay": 1, "surprise": 1}, "surprise"),
    ({"target": "t", "delay": 1, "value": "x" * 1_100_000}, "value"),  # > max_forward_bytes
]


def test_bodies_that_are_not_json_get_400_and_write_nothing(setup: Setup) -> None:
    before = ingest_commands(setup)
    for body in NOT_JSON:
        answer = setup.api.post("/jobs", raw=body)
        assert_error(answer, 400)
    assert ingest_commands(setup) == before


def test_mistyped_fields_get_422_naming_the_field_and_write_nothing(setup: Setup) -> None:
    api = setup.api
    before = ingest_commands(setup)
    # Given requests whose JSON is fine but whose fields are not
    cases = [*MISTYPED, ({"target": setup.ns.ingest, "delay": 1}, "target")]
    # Also with JSON's non-standard constants and unpaired surrogates, which Python parses
    raw = [
        (b'{"target": "t", "delay": NaN}', "delay"),
        (b'{"target": "t", "delay": Infinity}', "delay"),
        (b'{"target": "t", "delay": 1, "id": "\\ud800"}', "id"),
        (b'{"target": "t", "delay": 1, "value": "\\udfff"}', "value"),
        (b'{"target": "t", "delay": 1, "headers": {"\\ud800": "v"}}', "headers.0.name"),
    ]
    raw += [(json.dumps(body).encode(), field) for body, field in cases]
    answers = [(api.post("/jobs", raw=body), field) for body, field in raw]
    # Then each is refused with 422, naming the field in the API's words, input echoed in part
    for answer, field in answers:
        body = assert_error(answer, 422)
        fields = [error["field"] for error in body["errors"]]
        assert any(f == field or f.startswith(f"{field}.") for f in fields), (field, body)
        for error in body["errors"]:
            assert not JARGON.search(error["message"]), (field, error)
            assert len(error["message"]) < 200, (field, error)
    # And nothing reached the ingest topic
    assert ingest_commands(setup) == before


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ([], "body", "the request body must be a JSON object (fields: id, target, "),
        (None, "body", "the request body must be a JSON object (fields: id, target, "),
        (
            {"target": "t", "delay": 1, "headers": "abc"},
            "headers",
            "must be an object of names to text values, or an array of {",
        ),
        (
            {"target": "t" * 300, "delay": 1},
            "target",
            "'tttttttttttttttttttttttttttttttttttttttt…' (300 characters) is not a valid",
        ),
    ],
)
def test_messages_say_what_is_wrong_without_internal_names(
    setup: Setup, body: Any, field: str, says: str
) -> None:
    # When the newcomer's mistakes are posted
    error = assert_error(setup.api.post("/jobs", raw=json.dumps(body).encode()), 422)
    # Then the field's message says what is expected, and the summary carries it too
    found = {e["field"]: e["message"] for e in error["errors"]}
    assert found[field].startswith(says), found
    assert f"{field}: {found[field]}" in error["message"]
    assert not JARGON.search(error["message"]), error


def test_bad_queries_and_ids_of_the_other_endpoints_get_4xx(setup: Setup) -> None:
    api = setup.api
    for query in ["limit=abc", "limit=0", "limit=-1", "limit=1001", "limit=1e3", "before=soon"]:
        assert_error(api.get(f"/jobs?{query}"), 422)
    assert_error(api.get("/jobs?limit=" + "9" * 5_000), 422)
    assert_error(api.get("/jobs/" + "x" * 1_025), 422)
    assert_error(api.delete("/jobs/" + "x" * 1_025), 422)
    assert 400 <= api.get("/jobs/%FF%FE").status < 500  # not UTF-8 once decoded
    assert_error(api.get("/jobs/no-such-job"), 404)
    assert api.get("/stats?cluster=maybe").status == 200


def test_the_go_delayqueue_endpoints_answer_bad_input_in_their_envelope(setup: Setup) -> None:
    # go-delayqueue answers every request with HTTP 200 and a code in the body (README)
    api = setup.api
    before = ingest_commands(setup)
    cases: list[tuple[str, bytes, int]] = [
        ("add", b"oops", 400),
        ("add", b"[1, 2]", 400),
        ("add", b'{"topic": 1, "delay": 60}', 400),
        ("add", b'{"topic": "t", "delay": "60"}', 400),
        ("add", b'{"topic": "t", "delay": 0}', 400),
        ("add", b'{"topic": "t", "delay": 4294967296}', 10001),
        ("add", b'{"topic": "bad topic", "delay": 60}', 400),
        ("add", b'{"topic": "t", "delay": 60, "body": 5}', 400),
        ("get", b"{", 400),
        ("get", b'{"job_id": 7}', 400),
        ("get", b'{"job_id": ""}', 400),
        ("remove", b"\xff", 400),
        ("remove", b'{"job_id": null}', 400),
    ]
    for endpoint, body, code in cases:
        answer = api.post(f"/delay-queue/api/jobs/{endpoint}", raw=body)
        assert answer.status == 200, (endpoint, body, answer.status, answer.text[:200])
        envelope = answer.json
        assert (envelope["code"], envelope["data"]) == (code, None), (endpoint, body, envelope)
        assert envelope["message"].strip()
    assert ingest_commands(setup) == before


# --- too large ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/jobs", "/delay-queue/api/jobs/add"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_larger_than_the_server_takes_gets_413(
    setup: Setup, path: str, chunked: bool
) -> None:
    before = ingest_commands(setup)
    value = "x" * OVERSIZED
    body = json.dumps({"target": setup.ns.target(), "delay": 1, "value": value}).encode()
    if path != "/jobs":
        body = json.dumps({"topic": setup.ns.target(), "delay": 1, "body": value}).encode()
    answer = raw_request(setup.worker.web_port, path, body, chunked=chunked)
    # Then 413 in the route's own JSON envelope, naming the limit
    error = assert_family_error(path, answer, 413)
    assert "larger than the 2065536 bytes" in error["message"], error
    # And the worker is fine, and wrote nothing
    assert setup.api.get("/health").status == 200
    assert ingest_commands(setup) == before


# --- unknown routes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("POST", "/nope"),
        ("GET", "/jobs/"),
        ("DELETE", "/jobs/"),
        ("GET", "/job"),
        ("GET", "/delay-queue/api/jobs/nope"),
        ("POST", "/delay-queue/api/jobs"),
        ("GET", "/openapi.yaml"),
        ("GET", "/%00"),
        ("GET", "/" + "a" * 4_000),
        # Faust's own routing pages (its "router" blueprint, on unless web_router_enabled=False)
        # answer 500 for a table name they do not know
        ("GET", "/router/nope/"),
        ("GET", "/router/delayq-ingest/"),
    ],
)
def test_unknown_routes_get_404_in_json(setup: Setup, method: str, path: str) -> None:
    answer = setup.api.call(method, path)
    # Then 404 in the family's JSON envelope, saying which path has no endpoint
    error = assert_family_error(path, answer, 404)
    assert "no endpoint at" in error["message"], error
    assert len(error["message"]) < 200, error  # a long path is echoed in part only


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/jobs", "GET, HEAD, POST"),
        ("PATCH", "/jobs/x", "DELETE, GET, HEAD"),
        ("DELETE", "/jobs", "GET, HEAD, POST"),
        ("POST", "/health", "GET, HEAD"),
        ("PUT", "/delay-queue/api/jobs/add", "POST"),
        ("DELETE", "/delay-queue/api/jobs/get", "GET, HEAD, POST"),
    ],
)
def test_known_routes_with_another_method_get_405_in_json_with_allow(
    setup: Setup, method: str, path: str, allowed: str
) -> None:
    before = ingest_commands(setup)
    answer = setup.api.call(method, path, {"target": setup.ns.target(), "delay": 1})
    # Then 405 in the family's JSON envelope, with the methods the route takes
    error = assert_family_error(path, answer, 405)
    assert answer.headers["Allow"] == allowed, answer.headers
    assert error["message"] == f"{method} is not allowed on {path!r}; allowed: {allowed}"
    assert ingest_commands(setup) == before


def test_head_of_a_route_without_get_is_405(setup: Setup) -> None:
    # go-delayqueue's add takes only POST; a HEAD must not be answered as a GET
    answer = setup.api.call("HEAD", "/delay-queue/api/jobs/add")
    assert answer.status == 405, answer
    assert answer.headers["Allow"] == "POST", answer.headers
    # And a HEAD of a route with a GET is answered
    assert setup.api.call("HEAD", "/health").status == 200


# --- slow clients -------------------------------------------------------------------------------


def test_clients_that_stall_mid_request_do_not_block_others_and_leave_no_trace(
    setup: Setup,
) -> None:
    port = setup.worker.web_port
    before = ingest_commands(setup)
    good = json.dumps({"target": setup.ns.target(), "delay": "1h", "value": "x"}).encode()
    # Given clients that send part of a request and stall: mid request line, mid headers,
    # and mid body of a POST that would schedule a job
    partial = [
        b"GET /hea",
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Le",
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(good)
        + good[: len(good) // 2],
    ]
    stalled = []
    for data in partial * 5:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(data)
        stalled.append(sock)
    try:
        # When another client asks while they are all pending
        started = time.monotonic()
        answer = setup.api.get("/health")
        # Then it is answered at once
        assert answer.status == 200, answer.text
        assert time.monotonic() - started < 5
        assert setup.api.get("/stats").status == 200
        # And the stalled ones are still pending: no answer, connection open
        for sock in stalled:
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recv(1)
    finally:
        for sock in stalled:
            sock.close()
    # And the half-sent POSTs, abandoned, wrote nothing; the worker is still well
    assert ingest_commands(setup) == before
    assert setup.api.get("/health").status == 200


def test_a_valid_request_after_all_that_still_schedules(setup: Setup) -> None:
    # A control: the same worker still accepts a good request (the count goes up by one)
    before = ingest_commands(setup)
    answer = setup.api.post("/jobs", {"target": setup.ns.target(), "delay": "1h", "value": "x"})
    assert answer.status == 201, answer.text
    assert ingest_commands(setup) == before + 1


def test_a_target_with_a_trailing_newline_is_refused(setup: Setup) -> None:
    # "t\n" is not a Kafka topic name; a regex "$" matches before a final newline
    before = ingest_commands(setup)
    answer = setup.api.post("/jobs", {"target": setup.ns.target() + "\n", "delay": "1h"})
    assert_error(answer, 422)
    assert ingest_commands(setup) == before
