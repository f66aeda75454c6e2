"""The Go example (examples/go-sarama) against a real worker: sarama with its defaults.

sarama's default partitioner hashes the key with FNV-1a, not murmur2, so its commands land off
the job's home partition (``partition_of``): delayq moves them there. The ids below are picked so
that the two partitions differ, and the Go program's output shows where each record landed.

The example is built from Debian's packages (golang-go, golang-github-shopify-sarama-dev) in GOPATH
mode, offline. Without them the tests are skipped, saying so (``make go-deps`` installs them).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.api.routing import partition_of
from app.times import now_ms
from tests.conftest import WorkerFactory
from tests.support import (
    ROOT,
    Kafka,
    Namespace,
    create_topics,
    headers_of,
    schedule_headers,
    wait_for,
)

GOPATH = Path("/usr/share/gocode")
SARAMA = GOPATH / "src/github.com/Shopify/sarama"
GO = shutil.which("go") or next(
    (p for p in ("/usr/bin/go", "/usr/lib/go/bin/go") if Path(p).is_file()), None
)
_MISSING = [name for name, there in (("go", GO), ("sarama", SARAMA.is_dir())) if not there]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"no Go toolchain or sarama: {' and '.join(_MISSING)} not installed (Debian: "
        "`apt-get install golang-go golang-github-shopify-sarama-dev`, or `make go-deps` as root)",
    ),
]

BUILD_TIMEOUT_S = 300
RUN_TIMEOUT_S = 60


def sarama_partition(key: bytes, partitions: int) -> int:
    """The partition of sarama's default ``NewHashPartitioner`` (partitioner.go in 1.22):
    ``int32(fnv.New32a() of key) % n``, negated if negative (Go's % keeps the dividend's sign)."""
    hashed = 0x811C9DC5  # FNV-1a, 32 bits
    for byte in key:
        hashed = ((hashed ^ byte) * 0x01000193) & 0xFFFFFFFF
    signed = hashed - (1 << 32) if hashed & 0x80000000 else hashed
    return abs(signed) % partitions


def off_home_id(prefix: str, partitions: int, home: int | None = None) -> str:
    """The first ``prefix-N`` that sarama puts off its home partition (``home``, if given)."""
    for n in range(1000):
        job_id = f"{prefix}-{n}"
        key = job_id.encode()
        at_home = partition_of(key, partitions)
        if sarama_partition(key, partitions) != at_home and (home is None or home == at_home):
            return job_id
    raise AssertionError(f"no {prefix} id off its home partition")


def home_id(prefix: str, partitions: int, home: int) -> str:
    """The first ``prefix-N`` whose home partition is ``home``."""
    return next(
        f"{prefix}-{n}"
        for n in range(1000)
        if partition_of(f"{prefix}-{n}".encode(), partitions) == home
    )


def go_env(cache: Path) -> dict[str, str]:
    """GOPATH mode over Debian's sources: nothing is downloaded, no user Go settings apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(
        GO111MODULE="off",
        GOPATH=str(GOPATH),
        GOPROXY="off",
        GOENV="off",
        GOCACHE=str(cache),
        CGO_ENABLED="0",  # the example needs no zstd: no C compiler, no libzstd
    )
    return env


@pytest.fixture(scope="module")
def go_sarama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example, built once for this module."""
    assert GO is not None
    work = tmp_path_factory.mktemp("go-sarama")
    binary = work / "go-sarama"
    built = subprocess.run(
        [GO, "build", "-o", str(binary), "./examples/go-sarama"],
        cwd=ROOT,
        env=go_env(work / "cache"),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert built.returncode == 0, f"go build failed:\n{built.stdout}{built.stderr}"
    return binary


@dataclass(frozen=True)
class Produced:
    partition: int
    offset: int


GoRun = Callable[..., Awaitable[Produced]]


@pytest.fixture
def go(go_sarama: Path, kafka: Kafka, ns: Namespace) -> GoRun:
    """``await go("-id", "x", "-cancel")``: run the example against the test's broker and ingest."""

    async def run(*args: str) -> Produced:
        cmd = [str(go_sarama), "-brokers", kafka.bootstrap, "-topic", ns.ingest, *args]
        done = await asyncio.to_thread(
            subprocess.run, cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
        )
        assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stderr}"
        found = re.search(r"partition (\d+) offset (\d+)$", done.stdout.strip())
        assert found, f"unexpected output of {cmd}: {done.stdout!r}"
        return Produced(int(found[1]), int(found[2]))

    return run


def assert_off_home(job_id: str, produced: Produced, partitions: int) -> None:
    """The record is where sarama's FNV-1a puts it, which is not the job's home partition."""
    key = job_id.encode()
    assert produced.partition == sarama_partition(key, partitions)
    assert produced.partition != partition_of(key, partitions)


async def test_sarama_schedules_and_cancels_off_the_home_partition(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory, go: GoRun
) -> None:
    n = ns.partitions
    target = ns.target()
    # One target partition: the forwards arrive in the order the worker wrote them.
    await create_topics(kafka.bootstrap, [target], 1)
    start_worker()
    fired = off_home_id("go-fired", n)
    cancelled = off_home_id("go-cancelled", n)
    home = partition_of(cancelled.encode(), n)
    # A job scheduled by a murmur2 producer (at home at once) and cancelled by sarama (off home)
    mixed = off_home_id("py-cancelled", n, home)
    sentinel = home_id("sentinel", n, home)

    # When sarama schedules a job due in 1 s, and one due in 3 s that it cancels at once
    assert_off_home(
        fired, await go("-id", fired, "-target", target, "-delay", "1s", "-value", "hi"), n
    )
    assert_off_home(cancelled, await go("-id", cancelled, "-target", target, "-delay", "3000"), n)
    assert_off_home(cancelled, await go("-id", cancelled, "-cancel"), n)
    # And sarama cancels a job that aiokafka scheduled on its home partition
    now = now_ms()
    await kafka.send(ns.ingest, mixed.encode(), b"m", schedule_headers(target, due_ms=now + 3_000))
    assert_off_home(mixed, await go("-id", mixed, "-cancel"), n)
    # And a sentinel on the cancelled jobs' home partition is due after both
    await kafka.send(
        ns.ingest, sentinel.encode(), b"s", schedule_headers(target, due_ms=now + 5_000)
    )

    # Then once the sentinel is forwarded, only the scheduled job came before it
    records = await kafka.collect([target], lambda rs: any(r.key == sentinel.encode() for r in rs))
    assert [r.key for r in records] == [fired.encode(), sentinel.encode()]
    first = records[0]
    assert first.value == b"hi"
    assert headers_of(first)["delayq-job-id"] == fired.encode()


async def test_a_job_sarama_scheduled_is_read_and_cancelled_at_its_home_partition(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory, go: GoRun
) -> None:
    n = ns.partitions
    worker = start_worker()
    job_id = off_home_id("go-later", n)
    home = partition_of(job_id.encode(), n)
    # When sarama schedules a job due in an hour
    assert_off_home(job_id, await go("-id", job_id, "-target", ns.target(), "-delay", "1h"), n)
    # Then the HTTP API, which looks for it at home, finds it there
    wait_for(lambda: "http_status" not in worker.get_json(f"/jobs/{job_id}"), f"job {job_id}")
    assert worker.get_json(f"/jobs/{job_id}")["partition"] == home
    # And when sarama cancels it, it is gone
    assert_off_home(job_id, await go("-id", job_id, "-cancel"), n)
    wait_for(
        lambda: worker.get_json(f"/jobs/{job_id}").get("http_status") == 404,
        f"the cancel of {job_id}",
    )
