"""The chaos run, shortened: 2 workers, ~300 commands/s for 32 s (murmur2 producers), one SIGKILL
and restart, one worker SIGSTOPped past its session timeout and one broker SIGSTOP; nothing may
be lost or early,
no acknowledged cancel or replace may lose to a forward, and every duplicate is the same job's
forward. About a hundred recurring series among the jobs: each occurrence forwarded on time or
counted as skipped, none after an acknowledged cancel or replace.

The reconciler itself is checked on made-up records in tests/unit/test_chaos_reconcile.py, so
that a clean chaos result means something.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from app.embedded import EmbeddedBroker
from chaos.figures import (
    OCCURRENCES_AFTER_END,
    OCCURRENCES_EARLY,
    OCCURRENCES_MISSING,
    SUPERSEDED_ACKED_BEFORE_DUE,
)
from chaos.reconcile import Follower
from chaos.report import table
from chaos.run import ChaosConfig, run
from tests.support import create_topics

RESULTS = Path(__file__).resolve().parents[2] / "chaos" / "results"


@pytest.mark.integration
@pytest.mark.timeout(240)
async def test_a_short_chaos_run_loses_nothing_and_fires_nothing_early(tmp_path: Path) -> None:
    config = ChaosConfig(
        rate=300,
        recurring_share=0.01,  # about a hundred series
        duration_s=32,
        workers=2,
        partitions=8,
        max_delay_s=10,
        events=(("kill", 0.2), ("freeze", 0.4), ("pause", 0.6)),
        pause_s=4,
        restart_after_s=2,
        grace_s=30,
        quiet_s=15,
        max_lag_s=10,
        max_total_s=180,
        # murmur2 only: moved commands are `make chaos`'s (mixed partitioners, a longer run).
        partitioners=("murmur2",),
        out_dir=tmp_path,
        write_latest=False,
        command="tests/integration/test_chaos.py",
    )
    result = await run(config)
    report = table(result)
    print(report)
    if not result["ok"]:  # keep the evidence (worker logs, result.json) past pytest's cleanup
        kept = RESULTS / f"failed-{Path(result['run_dir']).name}"
        shutil.copytree(result["run_dir"], kept, dirs_exist_ok=True)
        report += f"\nrun directory kept in {kept}"
    figures = result["figures"]
    assert [w["recovered"] for w in result["disruptions"]] == [True, True, True], report
    assert figures["never_forwarded"] == 0, report
    assert figures["forwarded_early"] == 0, report
    # Every duplicate is a further forward of one schedule under its own job id and due time.
    assert figures["mismatched_forwards"] == 0, report
    assert figures["foreign_duplicates"] == 0, report
    assert figures[SUPERSEDED_ACKED_BEFORE_DUE] == 0, report
    assert figures["forwarded"] == figures["expected_forwards"] > 0, report
    assert figures["jobs_cancelled"] > 0 and figures["jobs_replaced"] > 0, report
    # Recurring jobs: every occurrence on time, forwarded or counted as skipped, none after an
    # acknowledged cancel or replace.
    assert figures["occurrences_expected"] > 0, report
    for name in (OCCURRENCES_EARLY, OCCURRENCES_AFTER_END, OCCURRENCES_MISSING):
        assert figures[name] == 0, report


async def _write(bootstrap: str, topic: str, name: str, records: int) -> set[bytes]:
    """``records`` records from one producer, a few per request; the keys acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        acks = []
        for i in range(records):
            key = f"{name}-{i}".encode()
            acks.append((key, await producer.send(topic, key, key=key, partition=i % 2)))
            if i % 3 == 2:
                await asyncio.sleep(0.001)
        return {key for key, ack in acks if await ack}
    finally:
        await producer.stop()


@pytest.mark.integration
async def test_the_forward_reader_gets_every_record_several_producers_wrote_at_once(
    broker: EmbeddedBroker,
) -> None:
    # Given the reconciler's reader following a topic of two partitions
    topic = f"follow-{time.monotonic_ns()}"
    await create_topics(broker.bootstrap, [topic], 2)
    follower = Follower(broker.bootstrap, [topic])
    await follower.start()
    try:
        # When six producers write to both partitions at once (the embedded broker can hand a
        # reader the records after a batch still being stored: quirk 8)
        writes = [_write(broker.bootstrap, topic, f"p{n}", 3_000) for n in range(6)]
        acked = set().union(*await asyncio.gather(*writes))
        # Then it reads every acknowledged record, reading skipped ranges again
        got: set[bytes] = set()
        deadline = time.monotonic() + 30
        while got != acked and time.monotonic() < deadline:
            got.update(record.key for record in follower.take())
            await asyncio.sleep(0.1)
        assert len(acked) == 18_000
        missing = len(acked - got)
        assert got == acked, f"{missing} missing; {follower.skipped_ranges} ranges read again"
    finally:
        await follower.stop()
