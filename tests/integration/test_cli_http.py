"""app.cli's ``get``, ``list`` and ``stats``: the command line asking a worker's HTTP API."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiokafka import ConsumerRecord
from click.testing import CliRunner, Result

from app.cli import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, cli
from app.embedded import EmbeddedBroker, free_port
from tests.conftest import WorkerFactory
from tests.support import ROOT, WAIT_S, Kafka, Namespace, create_topics, headers_of

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


async def invoke(args: Sequence[str]) -> Result:
    """Run the CLI in-process, off the test's event loop (it blocks on HTTP and Kafka)."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


async def eventually(
    args: Sequence[str], holds: Callable[[Result], bool], what: str, timeout: float = WAIT_S
) -> Result:
    """Run the CLI until ``holds(result)``; fail naming ``what`` after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await invoke(args)
        if holds(result):
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last output: {result.output!r}")
        await asyncio.sleep(0.1)


def assert_one_error_line(result: Result, exit_code: int, starts: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.stderr.startswith(starts), result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def row(table: str, label: str) -> list[str]:
    """The cells after ``label`` in the line of a ``stats`` table that starts with it."""
    [line] = [line for line in table.splitlines() if line.startswith(label + "  ")]
    return line[len(label) :].split()


@pytest.fixture
async def target(broker: EmbeddedBroker, ns: Namespace) -> str:
    await create_topics(broker.bootstrap, [ns.target()], 1)
    return ns.target()


# --- against a real worker --------------------------------------------------------------------


async def test_get_list_stats_then_cancel_through_the_http_api(
    broker: EmbeddedBroker,
    ns: Namespace,
    kafka: Kafka,
    target: str,
    start_worker: WorkerFactory,
) -> None:
    # Given a worker, and two jobs scheduled with the CLI, due in one and in two hours
    worker = start_worker()
    url = ["--url", f"http://127.0.0.1:{worker.web_port}"]
    schedule = ["schedule", "-t", target, "--bootstrap", broker.bootstrap]
    schedule += ["--ingest-topic", ns.ingest, "--app-id", ns.app_id]
    options = ["--id", "cli-http-1", "--key", "k-1", "-H", "trace=t-1", "--json"]
    first = await invoke([*schedule, "--delay", "1h", *options, "first value"])
    second = await invoke([*schedule, "--delay", "2h", "--id", "cli-http-2", "v2"])
    assert (first.exit_code, second.exit_code) == (EXIT_OK, EXIT_OK), first.output + second.output
    due_ms = json.loads(first.stdout)["due_ms"]

    # When `get` asks for the first one, until the worker has read it from the ingest topic
    human = await eventually(
        ["get", "cli-http-1", *url], lambda r: r.exit_code == EXIT_OK, "cli-http-1 to be pending"
    )
    as_json = await invoke(["get", "cli-http-1", *url, "--json"])
    # Then it shows one line with the job, and its JSON as the API has it
    assert human.stderr == "" and human.stdout.count("\n") == 1, human.output
    assert human.stdout.startswith("cli-http-1  pending  due "), human.stdout
    for part in (f"to {target}", "key 'k-1'", "value 'first value'", "headers trace='t-1'"):
        assert part in human.stdout, human.stdout
    job = json.loads(as_json.stdout)
    assert as_json.exit_code == EXIT_OK, as_json.output
    assert (job["id"], job["target"], job["due_ms"], job["status"]) == (
        "cli-http-1",
        target,
        due_ms,
        "pending",
    )
    assert (job["key"], job["value"]) == ("k-1", "first value")
    assert job["headers"] == [{"name": "trace", "value": "t-1"}]

    # When `list` runs: plain, with --before between the two due times, and with --limit 1
    listed = await eventually(
        ["list", *url], lambda r: r.stdout.count("\n") == 2, "both jobs to be listed"
    )
    before = await invoke(["list", *url, "--before", str(due_ms + HOUR_MS // 2), "--json"])
    limited = await invoke(["list", *url, "--limit", "1"])
    nothing = await invoke(["list", *url, "--before", "2000-01-01T00:00:00Z"])
    # Then it shows one line per job, earliest first, within the bounds given
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["cli-http-1", "cli-http-2"]
    assert [j["id"] for j in json.loads(before.stdout)["jobs"]] == ["cli-http-1"]
    assert limited.stdout.startswith("cli-http-1  pending") and limited.stdout.count("\n") == 1
    assert nothing.stdout == "no pending jobs due before 2000-01-01T00:00:00.000Z\n"
    assert {before.exit_code, limited.exit_code, nothing.exit_code} == {EXIT_OK}

    # When `stats` runs, for this worker and for the cluster
    table = await invoke(["stats", *url])
    local = await invoke(["stats", *url, "--json"])
    cluster = await invoke(["stats", "--cluster", *url, "--json"])
    cluster_table = await invoke(["stats", "-c", *url])
    # Then they count the pending jobs
    assert {table.exit_code, local.exit_code, cluster.exit_code, cluster_table.exit_code} == {
        EXIT_OK
    }, table.output + local.output + cluster.output + cluster_table.output
    assert int(row(table.stdout, "pending")[0]) >= 1
    assert row(table.stdout, "worker") == [f"http://127.0.0.1:{worker.web_port}"]
    assert json.loads(local.stdout)["pending"] >= 1
    assert json.loads(cluster.stdout)["total"]["pending"] >= 1
    assert row(cluster_table.stdout, "worker")[-1] == "total"
    assert int(row(cluster_table.stdout, "pending")[-1]) >= 1

    # When the server refuses the request (4xx)
    too_many = await invoke(["list", *url, "--limit", "5000"])
    too_long = await invoke(["get", "x" * 1025, *url])
    # Then exit 2 with the server's message
    assert_one_error_line(too_many, EXIT_USAGE, "delayq: error: invalid request: limit: ")
    assert_one_error_line(too_long, EXIT_USAGE, "delayq: error: invalid request: job_id: ")

    # When the first job is cancelled
    cancel = ["cancel", "cli-http-1", "--bootstrap", broker.bootstrap, "--ingest-topic", ns.ingest]
    cancel += ["--app-id", ns.app_id]
    cancelled = await invoke(cancel)
    assert cancelled.exit_code == EXIT_OK, cancelled.output
    # Then `get` exits 1 once the worker has applied the cancel, and the other job stays
    gone = await eventually(
        ["get", "cli-http-1", *url],
        lambda r: r.exit_code != EXIT_OK,
        "cli-http-1 to be cancelled",
    )
    assert_one_error_line(gone, EXIT_FAILURE, "delayq: error: job cli-http-1 is not pending")
    remaining = await invoke(["list", *url, "--json"])
    assert [j["id"] for j in json.loads(remaining.stdout)["jobs"]] == ["cli-http-2"]

    # When the second is cancelled with --wait, and then again
    won = await invoke(["cancel", "cli-http-2", "--wait", *url])
    again = await invoke(["cancel", "cli-http-2", "--wait", *url, "--json"])
    # Then the first says it won (exit 0), the second that there is no such job (exit 1)
    assert won.exit_code == EXIT_OK, won.output
    assert won.stdout.startswith("job cli-http-2 cancelled (due "), won.stdout
    assert again.exit_code == EXIT_FAILURE, again.output
    assert json.loads(again.stdout) == {"id": "cli-http-2", "status": "unknown"}


async def test_a_recurring_job_is_scheduled_shown_and_cancelled(
    broker: EmbeddedBroker,
    ns: Namespace,
    kafka: Kafka,
    target: str,
    start_worker: WorkerFactory,
) -> None:
    # Given a worker
    worker = start_worker()
    url = ["--url", f"http://127.0.0.1:{worker.web_port}"]
    kafka_options = ["--bootstrap", broker.bootstrap, "--ingest-topic", ns.ingest]
    kafka_options += ["--app-id", ns.app_id]
    # When a job is scheduled to recur every second
    scheduled = await invoke(
        ["schedule", "-t", target, "--every", "1s", "--id", "cli-every", *kafka_options, "tick"]
    )
    # Then the CLI says so, with its first occurrence
    assert scheduled.exit_code == EXIT_OK, scheduled.output
    said = f"scheduled job cli-every repeats every 1 s to {target}, first "
    assert scheduled.stdout.startswith(said), scheduled.stdout

    # And it is forwarded at two occurrences at least, each with its own due time
    def ticks(records: list[ConsumerRecord[bytes, bytes]]) -> set[bytes]:
        return {headers_of(r)["delayq-due-ms"] for r in records if r.key == b"cli-every"}

    await kafka.collect([target], lambda records: len(ticks(records)) >= 2)
    # And `get` and `list` show its rule in words
    for command in (["get", "cli-every"], ["list"]):
        await eventually(
            [*command, *url],
            lambda r: "cli-every" in r.stdout and "repeats every 1 s" in r.stdout,
            f"{command[0]} to show the rule",
        )

    # When it is cancelled
    cancelled = await invoke(["cancel", "cli-every", *kafka_options])
    assert cancelled.exit_code == EXIT_OK, cancelled.output
    # Then it is pending no more
    await eventually(
        ["get", "cli-every", *url], lambda r: r.exit_code == EXIT_FAILURE, "the series to end"
    )


async def test_the_url_defaults_to_delayq_web_port_in_a_real_subprocess(
    kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given a worker, and DELAYQ_WEB_PORT set to its port instead of --url
    worker = start_worker()
    env = {**os.environ, "DELAYQ_WEB_PORT": str(worker.web_port)}

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )

    # When `stats --json` and `get` of an unknown job run as separate processes
    stats, missing = await asyncio.gather(
        asyncio.to_thread(run, "stats", "--json"), asyncio.to_thread(run, "get", "no-such-job")
    )
    # Then they asked that worker: its stats, and exit 1 for the job
    assert stats.returncode == EXIT_OK, stats.stderr.decode()
    assert json.loads(stats.stdout)["worker"] == f"http://127.0.0.1:{worker.web_port}"
    assert missing.returncode == EXIT_FAILURE
    assert missing.stderr.decode() == (
        "delayq: error: job no-such-job is not pending "
        "(never scheduled, already forwarded or cancelled)\n"
    )


# --- no worker ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["get", "j"], ["list", "--json"], ["stats", "--cluster"]])
async def test_an_unreachable_worker_exits_3_with_one_line(args: list[str]) -> None:
    # Given nothing listening at the URL / When run / Then exit 3, one line naming the URL
    closed = f"http://127.0.0.1:{free_port()}"
    result = await invoke([*args, "--url", closed])
    assert_one_error_line(
        result, EXIT_UNAVAILABLE, f"delayq: error: cannot reach delayq at {closed}"
    )


async def test_a_worker_that_never_answers_exits_3_after_the_timeout() -> None:
    # Given a socket that accepts connections (in the kernel's backlog) but never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        # When `stats` asks it with a short timeout
        result = await invoke(["stats", "--url", url, "--timeout", "0.5"])
    # Then exit 3, saying so
    assert_one_error_line(result, EXIT_UNAVAILABLE, f"delayq: error: cannot reach delayq at {url}")
    assert "no answer within 0.5s" in result.stderr


BAD_INPUT = [
    (["get", ""], "Invalid value for 'ID': must not be empty"),
    (["list", "--limit", "0"], "0 is not in the range x>=1"),
    (["list", "--before", "soon"], "invalid time 'soon'"),
    (["stats", "--url", "ftp://host"], "--url: expected http://HOST:PORT, got 'ftp://host'"),
    (["stats", "--url", "http://host:99999"], "--url: expected http://HOST:PORT"),
    (["stats", "--timeout", "0"], "'--timeout'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
async def test_bad_input_exits_2_before_any_request(args: list[str], message: str) -> None:
    # Given bad input / When run / Then exit 2 with one line, before any connection attempt
    result = await invoke(args)
    assert_one_error_line(result, EXIT_USAGE, "delayq: error: ")
    assert message in result.stderr


async def test_a_bad_delayq_web_port_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given DELAYQ_WEB_PORT that is not a port and no --url / When run / Then exit 2
    monkeypatch.setenv("DELAYQ_WEB_PORT", "web")
    result = await invoke(["stats"])
    assert_one_error_line(
        result, EXIT_USAGE, "delayq: error: invalid settings: DELAYQ_WEB_PORT: 'web' is not a port"
    )


# --- answers a worker gives rarely (a rebalance, a bug) or another server gives ----------------


Canned = dict[str, tuple[int, dict[str, str], bytes]]


@pytest.fixture
def canned() -> Iterator[tuple[str, Canned]]:
    """A stand-in HTTP server answering each path with a canned (status, headers, body)."""
    answers: Canned = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = answers.get(self.path, (404, {}, b"404: Not Found"))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()
    server.server_close()
    thread.join()


def envelope(status: int, message: str) -> bytes:
    return json.dumps({"code": status, "message": message}).encode()


JSON = {"Content-Type": "application/json"}
REPLIES = [
    (
        ["stats"],
        "/stats",
        (503, {**JSON, "Retry-After": "1"}, envelope(503, "this worker is rebalancing")),
        EXIT_UNAVAILABLE,
        "delayq: error: this worker is rebalancing (HTTP 503, retry after 1s)\n",
    ),
    (
        ["get", "a b/c"],
        "/jobs/a%20b%2Fc",
        (503, JSON, envelope(503, "partition 3 is being recovered")),
        EXIT_UNAVAILABLE,
        "delayq: error: partition 3 is being recovered (HTTP 503)\n",
    ),
    (
        ["list"],
        "/jobs?limit=100",
        (422, JSON, envelope(422, "invalid request: before: bad")),
        EXIT_USAGE,
        "delayq: error: invalid request: before: bad (HTTP 422)\n",
    ),
    (
        ["list", "--before", "1000"],
        "/jobs?limit=100&before=1000",
        (500, JSON, envelope(500, "internal error (see the worker's log)")),
        EXIT_FAILURE,
        "delayq: error: internal error (see the worker's log) (HTTP 500)\n",
    ),
    (
        ["stats", "--cluster"],
        "/nothing-canned",
        (404, {}, b""),
        EXIT_USAGE,
        "delayq: error: HTTP 404 from {url} (not JSON): is it a delayq worker's API?\n",
    ),
    (
        ["get", "j"],
        "/jobs/j",
        (404, {"Content-Type": "text/plain"}, b"404: Not Found"),
        EXIT_USAGE,
        "delayq: error: HTTP 404 from {url} (not JSON): is it a delayq worker's API?\n",
    ),
    (
        ["stats"],
        "/stats",
        (200, {"Content-Type": "text/html"}, b"<html>hello</html>"),
        EXIT_FAILURE,
        "delayq: error: HTTP 200 from {url} (not JSON): is it a delayq worker's API?\n",
    ),
]


@pytest.mark.parametrize(("args", "path", "reply", "exit_code", "stderr"), REPLIES)
async def test_error_answers_map_to_exit_codes(
    canned: tuple[str, Canned],
    args: list[str],
    path: str,
    reply: tuple[int, dict[str, str], bytes],
    exit_code: int,
    stderr: str,
) -> None:
    # Given a server answering the command's request with an error
    url, answers = canned
    answers[path] = reply
    # When the command asks it
    result = await invoke([*args, "--url", url + "/"])
    # Then one line on stderr with the server's message, and the exit code of its kind
    assert_one_error_line(result, exit_code, "delayq: error: ")
    assert result.stderr == stderr.format(url=url)
