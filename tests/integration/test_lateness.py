"""Lateness is delayq's own delay: a job scheduled in the past is late only from its receipt.

Against a real worker: ``/stats``, ``/metrics`` and ``delayq stats`` after ``POST /jobs`` with
``"at": 0``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from app.api.models import StatsOut
from app.cli import cli
from app.embedded import EmbeddedBroker
from tests.support import Kafka, Namespace, Worker, create_topics, wait_for

pytestmark = pytest.mark.integration

#: Far below the 56 years a job due at the epoch has waited, far above any real lateness here.
SMALL_MS = 15_000


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        text: str = response.read().decode()
        return text


def post_json(port: int, path: str, body: Any) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        status: int = response.status
        return status


def test_a_job_scheduled_in_the_past_is_counted_apart_not_as_years_of_lateness(
    broker: EmbeddedBroker, ns: Namespace, start_worker: Callable[..., Worker]
) -> None:
    target = ns.target("reminders")
    asyncio.run(create_topics(broker.bootstrap, [ns.ingest, ns.fired, target], ns.partitions))
    worker = start_worker()
    port = worker.web_port
    wait_for(lambda: worker.health()["status"] == "ok", "the worker to be healthy")

    # When a job due at the epoch is scheduled, as in the README's POST /jobs
    assert post_json(port, "/jobs", {"target": target, "at": 0, "value": "past"}) == 201

    async def forwarded() -> None:
        await Kafka(broker.bootstrap).collect([target], lambda records: len(records) >= 1)

    asyncio.run(forwarded())

    def stats() -> StatsOut:
        return StatsOut.model_validate(json.loads(get(port, "/stats")))

    wait_for(lambda: stats().lateness_ms.samples == 1, "the forward's lateness")
    # Then its lateness is what delayq took, not the job's age, and it arrived past due
    after = stats()
    assert after.lateness_ms.max is not None and 0 <= after.lateness_ms.max < SMALL_MS
    assert after.counters.arrived_past_due == 1
    assert after.oldest_overdue_ms < SMALL_MS
    # and Prometheus sees the same
    families = {f.name: f for f in text_string_to_metric_families(get(port, "/metrics"))}
    assert families["delayq_arrived_past_due"].samples[0].value == 1
    summary = families["delayq_forward_lateness_seconds"].samples
    assert max(s.value for s in summary if s.labels.get("quantile")) < SMALL_MS / 1000
    # and so does `delayq stats`
    result = CliRunner().invoke(cli, ["stats", "--url", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 0, result.output
    assert any(
        line.split() == ["arrived", "past", "due", "1"] for line in result.output.splitlines()
    )
