"""``delayq tail TOPIC``: a topic's records as they arrive, as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import pytest

from app.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from app.embedded import EmbeddedBroker
from tests.support import ROOT, WAIT_S, Kafka, Namespace, create_topics, topic_names

pytestmark = pytest.mark.integration

DUE_MS = 1_900_000_000_000
LONG = "x" * 500


async def delayq(*args: str) -> tuple[int, str, str]:
    """Run ``python -m app.cli ARGS``: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 2 * WAIT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _interruptible() -> None:
    # Ctrl-C as in a terminal: a test run started in the background (`make test &`) has SIGINT
    # ignored, and its children would inherit that and never see the Ctrl-C under test.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def start_tail(*args: str) -> asyncio.subprocess.Process:
    """``delayq tail ARGS`` running in the background, its output unbuffered."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *["-m", "app.cli", "tail", *args],
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_interruptible,
    )


@pytest.fixture
async def topic(broker: EmbeddedBroker, ns: Namespace, kafka: Kafka) -> str:
    """Two partitions: a delayq forward 25 ms late in 1, a binary and a long record in 0."""
    name = ns.target("watched")
    await create_topics(broker.bootstrap, [name], 2)
    forward = [("delayq-job-id", b"job-7"), ("delayq-due-ms", str(DUE_MS).encode())]
    forward.append(("trace", b"\x00\xff"))
    await kafka.send(name, b"job-7", b"hello later", forward, DUE_MS + 25, partition=1)
    await kafka.send(name, None, b"\x00\x01binary\xff", partition=0)
    await kafka.send(name, b"k", LONG.encode(), partition=0)
    return name


async def test_tail_prints_each_record_with_its_headers_and_a_forwards_lateness(
    broker: EmbeddedBroker, topic: str
) -> None:
    # Given a topic with a delayq forward, a binary value and a long one
    # When it is tailed from the beginning, as text and as JSON
    follow = ["tail", topic, "--bootstrap", broker.bootstrap, "--from-beginning"]
    code, out, err = await delayq(*follow, "--max", "3", "--timeout", str(WAIT_S))
    json_code, json_out, _ = await delayq(*follow, "--max", "3", "--json")
    # Then each record is one line: partition@offset, time, key, value, headers, lateness
    assert (code, json_code) == (EXIT_OK, EXIT_OK), err
    assert err == f"following {topic} (2 partitions) from the oldest record; Ctrl-C stops\n"
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["1@0"] == (
        "1@0  2030-03-17T17:46:40.025Z  key 'job-7'  value 'hello later'  "
        "headers delayq-job-id='job-7', delayq-due-ms='1900000000000', trace=b'\\x00\\xff'  "
        "lateness 25ms"
    )
    binary = lines["0@0"].split("  ")
    assert binary[2:] == ["key null", "value b'\\x00\\x01binary\\xff'"]
    assert lines["0@1"].endswith(f"key 'k'  value '{'x' * 120}'... (500 bytes)")
    # And --json gives one object per line with everything, binary data in base64
    objects = {(o["partition"], o["offset"]): o for o in map(json.loads, json_out.splitlines())}
    forward: dict[str, Any] = objects[1, 0]
    assert forward == {
        "topic": topic,
        "partition": 1,
        "offset": 0,
        "timestamp_ms": DUE_MS + 25,
        "timestamp": "2030-03-17T17:46:40.025Z",
        "key": "job-7",
        "value": "hello later",
        "headers": [
            {"name": "delayq-job-id", "value": "job-7"},
            {"name": "delayq-due-ms", "value": str(DUE_MS)},
            {"name": "trace", "value": None, "value_base64": "AP8="},
        ],
        "lateness_ms": 25,
    }
    assert objects[0, 0]["value_base64"] == "AAFiaW5hcnn/"
    assert (objects[0, 0]["key"], objects[0, 0]["lateness_ms"]) == (None, None)
    assert objects[0, 1]["value"] == LONG


async def test_tail_of_a_topic_that_never_comes_exits_2_without_creating_it(
    broker: EmbeddedBroker, ns: Namespace
) -> None:
    # Given a broker that auto-creates topics / When a topic that is not there is tailed for 1 s
    missing = ns.target("missing")
    code, out, err = await delayq(
        "tail", missing, "--bootstrap", broker.bootstrap, "--timeout", "1"
    )
    # Then it said it waits, then exit 2 with one line, and the topic still is not there
    assert (code, out) == (EXIT_USAGE, "")
    assert err.splitlines() == [
        f"topic {missing} does not exist yet on {broker.bootstrap}: waiting for it; Ctrl-C stops",
        f"delayq: error: topic {missing!r} does not exist on {broker.bootstrap}",
    ]
    assert missing not in await topic_names(broker.bootstrap)


async def test_tail_started_before_its_topic_exists_prints_its_first_record(
    broker: EmbeddedBroker, ns: Namespace, kafka: Kafka
) -> None:
    # Given a tail started before its topic exists (as a newcomer does after make run)
    later = ns.target("later")
    proc = await start_tail(later, "--bootstrap", broker.bootstrap, "--max", "1")
    assert proc.stderr is not None
    waiting = await asyncio.wait_for(proc.stderr.readline(), WAIT_S)
    assert waiting.decode().startswith(f"topic {later} does not exist yet")
    # When the topic is created and its first record written
    await create_topics(broker.bootstrap, [later], 1)
    await kafka.send(later, b"k", b"first", partition=0)
    # Then the tail prints that record, whenever it saw the topic appear, and exits 0
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == EXIT_OK, err
    assert out.decode().endswith("  key 'k'  value 'first'\n")


async def test_tail_follows_from_the_end_until_ctrl_c(
    broker: EmbeddedBroker, kafka: Kafka, topic: str
) -> None:
    # Given a tail of a topic that already has records
    proc = await start_tail(topic, "--bootstrap", broker.bootstrap)
    assert proc.stdout is not None and proc.stderr is not None
    started = await asyncio.wait_for(proc.stderr.readline(), WAIT_S)
    assert started == f"following {topic} (2 partitions) from the end; Ctrl-C stops\n".encode()
    # When a record arrives / Then only that one is printed
    await kafka.send(topic, b"new", b"fresh", partition=0)
    line = await asyncio.wait_for(proc.stdout.readline(), WAIT_S)
    assert line.decode().startswith("0@2  ")
    assert line.decode().endswith("  key 'new'  value 'fresh'\n")
    # When Ctrl-C is pressed / Then it stops with exit 0 and says nothing more
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert (proc.returncode, out, err) == (EXIT_OK, b"", b"")


async def test_tail_exits_1_when_max_records_do_not_come_in_time(
    broker: EmbeddedBroker, topic: str
) -> None:
    # Given no new records / When a tail waits 1 s for one / Then exit 1 saying so
    code, _, err = await delayq(
        "tail", topic, "--bootstrap", broker.bootstrap, "--max", "1", "--timeout", "1"
    )
    assert code == EXIT_FAILURE
    assert err.splitlines()[-1] == f"delayq: error: 0 of 1 records from {topic} within 1s"
