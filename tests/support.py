"""Test support: a delayq worker as a real subprocess, and Kafka helpers (no mocks).

A worker is started exactly as in production (``python -m faust -A app worker``), with its own
consumer group, topics and data directory per test, so tests never see each other's records.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "[^Worker]: Ready"
WAIT_S = 60.0


@dataclass
class Namespace:
    """Topic and group names private to one test."""

    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    partitions: int = 4

    @property
    def app_id(self) -> str:
        return f"{self.prefix}-delayq"

    @property
    def ingest(self) -> str:
        return f"{self.prefix}-ingest"

    @property
    def fired(self) -> str:
        return f"{self.prefix}-fired"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}-dead-letters"

    def target(self, name: str = "out") -> str:
        return f"{self.prefix}-{name}"

    def env(self) -> dict[str, str]:
        return {
            "DELAYQ_APP_ID": self.app_id,
            "DELAYQ_INGEST_TOPIC": self.ingest,
            "DELAYQ_FIRED_TOPIC": self.fired,
            "DELAYQ_DEAD_LETTER_TOPIC": self.dead_letters,
            "DELAYQ_PARTITIONS": str(self.partitions),
        }


class Worker:
    """One ``faust -A app worker`` process."""

    def __init__(self, bootstrap: str, ns: Namespace, data_dir: Path, log_path: Path) -> None:
        self.bootstrap = bootstrap
        self.ns = ns
        self.data_dir = data_dir
        self.log_path = log_path
        self.web_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self, extra_env: dict[str, str] | None = None) -> Worker:
        env = {
            **os.environ,
            **self.ns.env(),
            "DELAYQ_BROKER_URL": f"kafka://{self.bootstrap}",
            "DELAYQ_DATA_DIR": str(self.data_dir),
            "DELAYQ_WEB_PORT": str(self.web_port),
            **(extra_env or {}),
        }
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def log_since_start(self) -> str:
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_offset)
            return fh.read().decode(errors="replace")

    def wait_ready(self, timeout: float = WAIT_S) -> Worker:
        """Block until the worker logs that it is ready (first assignment recovered)."""
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.log_since_start():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log_since_start()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not ready:\n{self.log_since_start()[-3000:]}")
            time.sleep(0.05)
        return self

    def health(self) -> dict[str, Any]:
        """The worker's ``/health`` body (status ok or recovering)."""
        url = f"http://127.0.0.1:{self.web_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        except OSError as exc:
            body = {"status": f"unreachable: {exc}"}
        return body

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no commit."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


Headers = Sequence[tuple[str, bytes]]


def schedule_headers(
    target: str, *, due_ms: int | None = None, delay_ms: int | None = None, **extra: bytes
) -> list[tuple[str, bytes]]:
    headers = [("delayq-target", target.encode())]
    if due_ms is not None:
        headers.append(("delayq-due-ms", str(due_ms).encode()))
    if delay_ms is not None:
        headers.append(("delayq-delay-ms", str(delay_ms).encode()))
    headers.extend((name.replace("_", "-"), value) for name, value in extra.items())
    return headers


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


class Kafka:
    """A producer and consumers against the test broker."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
        timestamp_ms: int | None = None,
        partition: int | None = None,
    ) -> Any:
        return await self.producer.send_and_wait(
            topic,
            value,
            key=key,
            headers=list(headers),
            timestamp_ms=timestamp_ms,
            partition=partition,
        )

    async def send_many(
        self,
        topic: str,
        records: Iterable[tuple[bytes | None, bytes | None, Headers]],
        partition: Callable[[int], int | None] = lambda _i: None,
    ) -> None:
        """Send in one batch, then await every ack; ``partition(i)`` picks record i's partition."""
        futures = [
            await self.producer.send(
                topic, value, key=key, headers=list(headers), partition=partition(i)
            )
            for i, (key, value, headers) in enumerate(records)
        ]
        await asyncio.gather(*futures)

    async def collect(
        self,
        topics: Sequence[str],
        until: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
        timeout: float = WAIT_S,
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Read ``topics`` from the beginning until ``until(records)`` holds (or time is up)."""
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        try:
            while not until(records) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for tp_records in batch.values():
                    records.extend(tp_records)
        finally:
            await consumer.stop()
        return records


def headers_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, bytes]:
    return {name: value for name, value in record.headers}


def by_job_id(records: Iterable[ConsumerRecord[bytes, bytes]]) -> dict[bytes, list[Any]]:
    out: dict[bytes, list[Any]] = {}
    for record in records:
        out.setdefault(headers_of(record)["delayq-job-id"], []).append(record)
    return out
