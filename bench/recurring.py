"""delayq alone: the cost of a firing that reschedules (recurring jobs).

``rate`` series every second (``delayq-every-ms`` = 1000), their first occurrences spread evenly
over one second, each ending (``delayq-until-ms``) at its ``duration_s``-th occurrence: the
worker forwards ``rate`` occurrences a second for ``duration_s``, as the steady scenario forwards
``rate`` one-shot jobs a second. The series are written and ingested before their first
occurrence, so what is measured is firing alone: the send, its acknowledgement, the fired record,
and the rewrite of the job at its next occurrence in the step that removes a one-shot job
(``remove_fired`` in app/ingest.py).

- **Lateness** of each occurrence, as the steady scenario's (bench/measure.py), the occurrences
  told apart by their due time.
- **CPU per occurrence**: the contender's processes' CPU from the first occurrence's due time
  until the last occurrence of every series arrived, divided by the occurrences; the broker's
  the same. A one-shot job's CPU per job (steady) also holds its ingest.
- **Skipped**: occurrences the worker did not send because a later one was due too (its
  ``occurrences_skipped`` counter): a series' last occurrence is never skipped, so the wait ends
  there, and the skipped ones show as missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from app.times import now_ms
from bench.contenders import Delayq
from bench.load import Job
from bench.measure import Collector, summarize
from bench.scenarios import DELAYQ_INGEST_PER_MS, WARM_JOBS, Runner, cpu_of, session, wait_ingested

__all__ = ["EVERY_MS", "recurring"]

EVERY_MS = 1_000
#: The first occurrence comes this long after the series are written, plus their ingest time:
#: the wait for them to be ingested reads committed offsets, which Faust commits every ~2.8 s.
LEAD_MS = 5_000
GRACE_S = 30
#: The worker's counters a run reports the change of.
COUNTERS = ("fired", "rescheduled", "occurrences_skipped")


def series_plan(tag: str, count: int, first_ms: int, every_ms: int) -> list[Job]:
    """``count`` series, their first occurrences spread evenly over one interval from
    ``first_ms`` (``Job.due_ms``: the first occurrence)."""
    now = now_ms()
    return [
        Job(f"{tag}-{i:06d}".encode(), now, first_ms + i * every_ms // count) for i in range(count)
    ]


async def recurring(
    r: Runner, names: Sequence[str], rate: float, duration_s: float
) -> dict[str, Any]:
    """For each delayq contender: ``rate`` occurrences/s of series every second, for
    ``duration_s``."""
    count = round(rate * EVERY_MS / 1000)
    occurrences = round(duration_s * 1000 / EVERY_MS)
    results = {name: await recurring_one(r, name, count, occurrences) for name in names}
    return {
        "rate": rate,
        "duration_s": duration_s,
        "every_ms": EVERY_MS,
        "series": count,
        "contenders": results,
    }


async def recurring_one(r: Runner, name: str, count: int, occurrences: int) -> dict[str, Any]:
    """``count`` series of ``occurrences`` each on a new contender: lateness, CPU, counters."""
    tag = r.tag("re")
    async with session(r, name, tag) as (c, collector):
        if not isinstance(c, Delayq):
            raise ValueError(f"{name}: only delayq has recurring jobs")
        first_ms = now_ms() + LEAD_MS + round(count / DELAYQ_INGEST_PER_MS)
        plan = series_plan(tag, count, first_ms, EVERY_MS)
        await r.gen.bulk(c.record_series(job, EVERY_MS, occurrences) for job in plan)
        ingested = await wait_ingested(r, c, count + WARM_JOBS, max(60, count / 500), "recurring")
        out: dict[str, Any] = {
            "ingested_before_first_ms": None if ingested is None else first_ms - ingested
        }
        collector.by_occurrence = True  # after the warm-up: its jobs are one-shot
        await asyncio.sleep(max(0.0, (first_ms - now_ms()) / 1000))
        out.update(await _fire(r, c, collector, plan, occurrences))
    r.log(
        "recurring",
        name,
        f"delivered {out['delivered']}/{out['expected']} p50 {out['p50_ms']} p99 "
        f"{out['p99_ms']} max {out['max_ms']} ms, early {out['early']}, skipped "
        f"{out.get('occurrences_skipped')}, CPU {out['cpu_ms_per_occurrence']} ms per occurrence",
    )
    return out


async def _fire(
    r: Runner, c: Delayq, collector: Collector, plan: list[Job], occurrences: int
) -> dict[str, Any]:
    """From the first occurrence's due time until every series' last one arrived."""
    last = (occurrences - 1) * EVERY_MS
    every = [
        Collector.occurrence_key(job.key, job.due_ms + k * EVERY_MS)
        for job in plan
        for k in range(occurrences)
    ]
    finals = [Collector.occurrence_key(job.key, job.due_ms + last) for job in plan]
    counters_before = await c.counters()
    broker = [r.broker_pid()]
    cpu_before, broker_before = cpu_of(c.pids()), cpu_of(broker)
    timeout = max(0.0, (max(job.due_ms for job in plan) + last - now_ms()) / 1000) + GRACE_S
    await collector.wait_for(
        finals,
        timeout,
        lambda _n: r.log("recurring", c.name, f"received {collector.count(every)}/{len(every)}"),
        stop_early=lambda: not c.alive(),
    )
    cpu, broker_cpu = cpu_of(c.pids()) - cpu_before, cpu_of(broker) - broker_before
    out = summarize(collector.lateness(every), len(every), collector.duplicates, with_cdf=True)
    out["cpu_ms_per_occurrence"] = round(cpu * 1000 / len(every), 3)
    if broker[0] is not None:
        out["broker_cpu_ms_per_occurrence"] = round(broker_cpu * 1000 / len(every), 3)
    out.update(_counted(counters_before, await c.counters()))
    if not c.alive():
        out["error"] = f"{c.name} exited during the run"
    return out


def _counted(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The change of the workers' :data:`COUNTERS` (nothing if a worker did not answer)."""
    if "counters" not in after or "counters" not in before:
        return {}
    old, new = before["counters"], after["counters"]
    return {name: new.get(name, 0) - old.get(name, 0) for name in COUNTERS}
