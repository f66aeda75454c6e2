"""app.cli: the ``delayq`` command line, in-process (CliRunner) and as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord
from click.testing import CliRunner, Result

from app.cli import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, cli
from app.embedded import EmbeddedBroker, free_port
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


def job_id_of(record: ConsumerRecord[bytes, bytes]) -> str:
    return headers_of(record)["delayq-job-id"].decode()


def has_jobs(*job_ids: str) -> Callable[[Records], bool]:
    return lambda records: set(job_ids) <= {job_id_of(r) for r in records}


async def invoke(args: Sequence[str], stdin: bytes | None = None) -> Result:
    """Run the CLI in-process, off the test's event loop (it blocks while it talks to Kafka)."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, cli, list(args), input=stdin)


def assert_one_error_line(stderr: str, starts: str = "delayq: error: ") -> None:
    assert stderr.startswith(starts), stderr
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    assert "Traceback" not in stderr


@pytest.fixture
async def target(broker: EmbeddedBroker, ns: Namespace) -> str:
    await create_topics(broker.bootstrap, [ns.target()], 1)
    return ns.target()


@pytest.fixture
def connect(broker: EmbeddedBroker, ns: Namespace) -> list[str]:
    return ["--bootstrap", broker.bootstrap, "--ingest-topic", ns.ingest, "--app-id", ns.app_id]


# --- with a worker ----------------------------------------------------------------------------


async def test_schedule_forwards_values_from_an_argument_stdin_and_a_file(
    ns: Namespace,
    kafka: Kafka,
    target: str,
    connect: list[str],
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    # Given a worker, and a file holding binary data
    start_worker()
    path = tmp_path / "value.bin"
    path.write_bytes(b"\x00from a file\xff")
    base = ["schedule", "-t", target, *connect]
    # When the value comes as an argument, with a key, headers and --json
    headers = ["-H", "trace=t-1", "-H", "x=a=b"]
    as_argument = await invoke(
        [*base, "--delay", "1s", "--key", "order-1", *headers, "--json", "--id", "cli-arg", "v1"]
    )
    # And from stdin, with a due time and the human output
    from_stdin = await invoke(
        [*base, "--at", str(now_ms() + 500), "--id", "cli-stdin", "-"], b"\x01in"
    )
    # And from a file, and as a tombstone
    from_file = await invoke([*base, "--delay", "0", "--file", str(path), "--json"])
    tombstone = await invoke([*base, "--delay", "500ms", "--tombstone", "--id", "cli-none"])
    # Then every command succeeds with one line of output
    for result in (as_argument, from_stdin, from_file, tombstone):
        assert result.exit_code == EXIT_OK, result.output
        assert result.stderr == "" and result.stdout.count("\n") == 1
    scheduled = json.loads(as_argument.stdout)
    assert set(scheduled) == {"job_id", "due_ms", "due_at", "target", "rule"}
    assert scheduled["rule"] is None  # a one-shot job
    assert (scheduled["job_id"], scheduled["target"]) == ("cli-arg", target)
    assert scheduled["due_at"].endswith("Z")
    assert from_stdin.stdout.startswith("scheduled job cli-stdin for ")
    assert from_stdin.stdout.rstrip().endswith(f"to {target}")
    file_job = json.loads(from_file.stdout)["job_id"]
    # And the worker forwards them as given
    records = await kafka.collect([target], has_jobs("cli-arg", "cli-stdin", file_job, "cli-none"))
    got = {job_id_of(r): r for r in records}
    assert got["cli-arg"].value == b"v1"
    assert got["cli-arg"].key == b"order-1"
    assert headers_of(got["cli-arg"]) == {
        "trace": b"t-1",
        "x": b"a=b",
        "delayq-job-id": b"cli-arg",
        "delayq-due-ms": str(scheduled["due_ms"]).encode(),
    }
    assert got["cli-stdin"].value == b"\x01in"
    assert got[file_job].value == b"\x00from a file\xff"
    assert got["cli-none"].value is None


async def test_cancel_prevents_the_forward(
    ns: Namespace, kafka: Kafka, target: str, connect: list[str], start_worker: WorkerFactory
) -> None:
    # Given a worker and a job due in a few seconds
    start_worker()
    base = ["schedule", "-t", target, *connect, "--json"]
    doomed = await invoke([*base, "--delay", "4s", "--id", "doomed", "v"])
    assert doomed.exit_code == EXIT_OK, doomed.output
    # When it is cancelled
    cancelled = await invoke(["cancel", "doomed", *connect, "--json"])
    assert cancelled.exit_code == EXIT_OK, cancelled.output
    assert json.loads(cancelled.stdout) == {"job_id": "doomed", "cancel_sent": True}
    human = await invoke(["cancel", "never-scheduled", *connect])
    assert (human.exit_code, human.stdout) == (EXIT_OK, "cancel of job never-scheduled sent\n")
    # And a job due after it, then a marker, are forwarded
    later_at = str(json.loads(doomed.stdout)["due_ms"] + 1_000)
    later = await invoke([*base, "--at", later_at, "--id", "later", "v"])
    assert later.exit_code == EXIT_OK, later.output
    await kafka.collect([target], has_jobs("later"))
    marker = await invoke([*base, "--delay", "0", "--id", "marker", "v"])
    assert marker.exit_code == EXIT_OK, marker.output
    records = await kafka.collect([target], has_jobs("marker"))
    # Then the cancelled job never was
    assert [job_id_of(r) for r in records] == ["later", "marker"]


async def test_a_real_subprocess_reads_stdin_and_settings_from_the_environment(
    broker: EmbeddedBroker,
    ns: Namespace,
    kafka: Kafka,
    target: str,
    start_worker: WorkerFactory,
) -> None:
    # Given a worker, and DELAYQ_* settings instead of --bootstrap / --ingest-topic
    start_worker()
    env = {
        **os.environ,
        "DELAYQ_BROKER_URL": f"kafka://{broker.bootstrap}",
        "DELAYQ_INGEST_TOPIC": ns.ingest,
        "DELAYQ_APP_ID": ns.app_id,
    }
    # When `python -m app.cli schedule ... -` runs with a value on stdin
    args = ["schedule", "--target", target, "--delay", "1s", "--id", "sub-1", "--json", "-"]
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        input=b"from stdin\n\x00",
        capture_output=True,
        timeout=120,
        check=False,
    )
    # Then it exits 0 with the job as JSON, and the worker forwards the exact bytes
    assert done.returncode == EXIT_OK, done.stderr.decode()
    assert json.loads(done.stdout)["job_id"] == "sub-1"
    [record] = await kafka.collect([target], has_jobs("sub-1"))
    assert record.value == b"from stdin\n\x00"


# --- the ingest topic, and where the broker is ------------------------------------------------


async def test_a_missing_ingest_topic_exits_2_and_is_not_created(
    broker: EmbeddedBroker, ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployment's topics on a broker that auto-creates topics
    await create_deployment_topics(broker.bootstrap, ns)
    monkeypatch.setenv("DELAYQ_APP_ID", ns.app_id)
    typo = f"{ns.prefix}-no-such-ingest"
    # When a job is scheduled, and one cancelled, through a mistyped --ingest-topic
    args = ["--bootstrap", broker.bootstrap, "--ingest-topic", typo]
    scheduled = await invoke(["schedule", *args, "-t", "reminders", "--delay", "1m", "hello"])
    cancelled = await invoke(["cancel", *args, "some-job"])
    # Then both exit 2 with one line saying so, and the topic still does not exist
    for result in (scheduled, cancelled):
        assert result.exit_code == EXIT_USAGE, result.output
        assert_one_error_line(result.stderr, f"delayq: error: the ingest topic {typo!r} does not")
        assert result.stdout == ""
    assert typo not in await topic_names(broker.bootstrap)


async def test_an_ingest_topic_of_another_partition_count_exits_2(
    broker: EmbeddedBroker, ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployment of 4 partitions and a topic of 2
    await create_deployment_topics(broker.bootstrap, ns)
    await create_topics(broker.bootstrap, [ns.target("two")], 2)
    monkeypatch.setenv("DELAYQ_APP_ID", ns.app_id)
    # When it is given as the ingest topic / Then exit 2, naming both counts
    schedule = ["schedule", "-t", "out", "--delay", "1s", "v", "--bootstrap", broker.bootstrap]
    result = await invoke([*schedule, "--ingest-topic", ns.target("two")])
    assert result.exit_code == EXIT_USAGE, result.output
    assert_one_error_line(result.stderr, f"delayq: error: topic '{ns.target('two')}' has 2 ")
    assert f"of app id '{ns.app_id}' have 4" in result.stderr


async def test_the_broker_defaults_to_the_embedded_port_unless_delayq_broker_url_is_set(
    broker: EmbeddedBroker, ns: Namespace, kafka: Kafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployment, the broker's port in DELAYQ_EMBEDDED_PORT (as `make run` is given it)
    # and no DELAYQ_BROKER_URL nor --bootstrap
    await create_deployment_topics(broker.bootstrap, ns)
    for name, value in ns.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DELAYQ_BROKER_URL", raising=False)
    monkeypatch.setenv("DELAYQ_EMBEDDED_PORT", str(broker.port))
    # When a job is scheduled / Then it reaches that broker
    embedded = await invoke(["schedule", "-t", "out", "--delay", "1h", "--id", "by-port", "v"])
    assert embedded.exit_code == EXIT_OK, embedded.output
    # And DELAYQ_BROKER_URL still wins over it
    monkeypatch.setenv("DELAYQ_EMBEDDED_PORT", str(free_port()))
    monkeypatch.setenv("DELAYQ_BROKER_URL", f"kafka://{broker.bootstrap}")
    by_url = await invoke(["schedule", "-t", "out", "--delay", "1h", "--id", "by-url", "v"])
    assert by_url.exit_code == EXIT_OK, by_url.output
    records = await kafka.collect([ns.ingest], lambda rs: len(rs) >= 2)
    assert sorted(r.key for r in records) == [b"by-port", b"by-url"]
    # And the help says so
    shown = await invoke(["schedule", "--help"])
    assert "$DELAYQ_BROKER_URL, else 127.0.0.1:$DELAYQ_EMBEDDED_PORT" in " ".join(
        shown.stdout.split()
    )


# --- errors -------------------------------------------------------------------------------------


BAD_INPUT = [
    (["schedule", "--delay", "1s", "v"], "Missing option '-t' / '--target'"),
    (["schedule", "-t", "out", "v"], "give exactly one of --delay or --at"),
    (["schedule", "-t", "out", "--delay", "1s", "--at", "0", "v"], "exactly one of --delay"),
    (["schedule", "-t", "out", "--delay", "5x", "v"], "invalid duration '5x': unknown unit 'x'"),
    (["schedule", "-t", "out", "--delay", "30", "v"], "'30' needs a unit"),
    (["schedule", "-t", "out", "--delay", "-1s", "v"], "must not be negative"),
    (["schedule", "-t", "out", "--at", "2030-05-01T12:00:00", "v"], "needs a time zone"),
    (["schedule", "-t", "out", "--at", "soon", "v"], "expected ISO-8601"),
    (["schedule", "-t", "out", "--delay", "1s"], "give the value as an argument"),
    (["schedule", "-t", "out", "--delay", "1s", "--tombstone", "v"], "only one of them"),
    (["schedule", "-t", "out", "--delay", "1s", "-f", "/no/such/file"], "No such file"),
    (["schedule", "-t", "bad topic", "--delay", "1s", "v"], "--target: 'bad topic' is not a"),
    (["schedule", "-t", "out", "--delay", "1s", "-H", "novalue", "v"], "expected NAME=VALUE"),
    (["schedule", "-t", "out", "--delay", "1s", "-H", "delayq-x=1", "v"], "--header: 'delayq-x'"),
    (["schedule", "-t", "out", "--delay", "1s", "--id", "", "v"], "--id: must not be empty"),
    (["schedule", "-t", "out", "--delay", "1s", "--ingest-topic", "a b", "v"], "--ingest-topic"),
    (["schedule", "-t", "out", "--delay", "1s", "--timeout", "0", "v"], "'--timeout'"),
    (["cancel"], "Missing argument 'ID'"),
    (["cancel", "x" * 1025], "ID: longer than 1024 bytes"),
    (["reschedule"], "No such command 'reschedule'"),
    (["schedule", "--tagret", "out"], "No such option: --tagret"),
    (["schedule", "-t", "out", "--cron", "61 * * * *", "v"], "--cron: '61 * * * *' is not a cron"),
    (
        ["schedule", "-t", "out", "--cron", "@daily", "--timezone", "Mars/Olympus", "v"],
        "--timezone: 'Mars/Olympus' is not an IANA time zone",
    ),
    (["schedule", "-t", "out", "--every", "500ms", "v"], "--every: 500 is below the minimum"),
    (["schedule", "-t", "out", "--every", "often", "v"], "invalid duration 'often'"),
    (["schedule", "-t", "out", "--every", "1m", "--cron", "@daily", "v"], "give --cron or --ev"),
    (["schedule", "-t", "out", "--delay", "1s", "--timezone", "UTC", "v"], "a --cron rule only"),
    (["schedule", "-t", "out", "--delay", "1s", "--until", "0", "v"], "needs --cron or --every"),
    (["schedule", "-t", "out", "--every", "1m", "--until", "0", "v"], "--until: 1970-01-01T00"),
    (["schedule", "-t", "out", "--every", "1m", "--delay", "1h", "--until", "1", "v"], "--until"),
    (["schedule", "-t", "out", "--every", "1m", "--until", "later", "v"], "invalid time 'later'"),
    (["schedule", "-t", "out", "v"], "or --cron or --every for a recurring job"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
async def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    # Given bad input, and a broker address where nothing listens (a connection attempt would
    # exit 3 instead) / When run / Then exit 2 and one line on stderr, no traceback
    result = await invoke([*args, "--bootstrap", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert_one_error_line(result.stderr)
    assert message in result.stderr
    assert result.stdout == ""


async def test_invalid_settings_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a bad DELAYQ_* variable and no --bootstrap: the settings are read
    monkeypatch.setenv("DELAYQ_BROKER_URL", " ")
    # When run / Then exit 2, naming the variable
    result = await invoke(["cancel", "j"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert_one_error_line(result.stderr, "delayq: error: invalid settings: DELAYQ_BROKER_URL")


@pytest.mark.parametrize(
    "args",
    [["schedule", "-t", "out", "--delay", "1s", "--json", "v"], ["cancel", "j", "--json"]],
)
async def test_an_unreachable_broker_exits_3_with_one_line(args: list[str]) -> None:
    # Given nothing listening on the broker address / When run / Then exit 3, one line
    closed = f"127.0.0.1:{free_port()}"
    result = await invoke([*args, "--bootstrap", closed, "--timeout", "2"])
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert_one_error_line(
        result.stderr, f"delayq: error: cannot reach the Kafka broker at {closed}"
    )
    assert result.stdout == ""


async def test_help_and_version_exit_0() -> None:
    for args in (["--help"], ["schedule", "--help"], ["cancel", "-h"], ["--version"]):
        result = await invoke(args)
        assert result.exit_code == EXIT_OK, result.output
        assert result.stderr == ""


def test_a_real_subprocess_exits_2_and_3_with_one_line_on_stderr() -> None:
    # Given the CLI as a separate process
    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            input=b"",
            capture_output=True,
            timeout=120,
            check=False,
        )

    closed = f"127.0.0.1:{free_port()}"
    # When the input is bad / Then exit 2
    bad = run("schedule", "-t", "out", "--delay", "soon", "--bootstrap", closed, "v")
    assert bad.returncode == EXIT_USAGE
    assert_one_error_line(bad.stderr.decode())
    # When the broker is unreachable / Then exit 3 (and no aiokafka log lines)
    gone = run("cancel", "j", "--bootstrap", closed, "--timeout", "2")
    assert gone.returncode == EXIT_UNAVAILABLE
    assert_one_error_line(gone.stderr.decode(), "delayq: error: cannot reach the Kafka broker")
    assert bad.stdout == gone.stdout == b""
