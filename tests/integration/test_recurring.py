"""Recurring jobs against the embedded broker: an interval series forwarded on time, each
occurrence once; cancel ends it; replace changes it. Bad rules: tests/integration/test_bad_input.py;
a SIGKILL and a hand-over: tests/integration/test_durability.py."""

from __future__ import annotations

from typing import Any

import pytest

from app.times import now_ms
from tests.conftest import WorkerFactory
from tests.support import (
    Kafka,
    Namespace,
    headers_of,
    missed_occurrences,
    occurrences,
    schedule_headers,
)

pytestmark = pytest.mark.integration

EVERY = 1_000


async def test_a_series_fires_each_occurrence_once_until_cancelled_or_replaced(
    ns: Namespace, kafka: Kafka, start_worker: WorkerFactory
) -> None:
    # Given a worker, and three series every second from the same first occurrence
    start_worker()
    target = ns.target()
    first = now_ms() + 1_500
    every = str(EVERY).encode()
    series = [b"kept", b"cancelled", b"replaced"]
    await kafka.send_many(
        ns.ingest,
        [
            (s, b"old", schedule_headers(target, due_ms=first, delayq_every_ms=every))
            for s in series
        ],
    )
    # When each has fired twice, the second is cancelled and the third replaced: every 2 s
    await kafka.collect([target], lambda rs: all(len(set(occurrences(rs, s))) >= 2 for s in series))
    await kafka.send(ns.ingest, b"cancelled", None)
    replaced_from = now_ms() + 1_000
    await kafka.send(
        ns.ingest,
        b"replaced",
        b"new",
        schedule_headers(target, due_ms=replaced_from, delayq_every_ms=b"2000"),
    )
    acknowledged = now_ms()

    # Then the kept one goes on, on time and each occurrence once
    def enough(records: list[Any]) -> bool:
        return (
            len(set(occurrences(records, b"kept"))) >= 6
            and len([d for d in occurrences(records, b"replaced") if d >= replaced_from]) >= 2
        )

    records = await kafka.collect([target], enough)
    assert enough(records), "a series stopped"
    assert missed_occurrences(records, b"kept", first, EVERY) == 0
    kept = occurrences(records, b"kept")
    assert len(kept) == len(set(kept)), f"an occurrence forwarded twice: {kept}"
    # And nothing of the cancelled one is due after the cancel was acknowledged
    assert all(due <= acknowledged for due in occurrences(records, b"cancelled"))
    # And the replaced one fires its new value every 2 s from its new first occurrence
    after = [r for r in records if r.key == b"replaced" and r.value == b"new"]
    assert [int(headers_of(r)["delayq-due-ms"]) for r in after][:2] == [
        replaced_from,
        replaced_from + 2_000,
    ]
    assert all(
        int(headers_of(r)["delayq-due-ms"]) <= acknowledged
        for r in records
        if r.key == b"replaced" and r.value == b"old"
    )
