"""delayq alone: memory per pending job (capacity) and recovery after SIGKILL.

- capacity: jobs due in a day are written to the ingest topic until the worker holds 10k, 100k,
  1M pending; once its consumer group has committed every ingest offset (the jobs are in the
  table), the worker's RSS is read from /proc. Growth = RSS difference / jobs added.
- recovery: meanwhile a prober writes one job per ingest partition every 200 ms, due at once.
  The worker holding the pending jobs is SIGKILLed and restarted (data directory kept, then
  wiped); the figure is the time from the kill until every partition forwards a probe due after
  the kill again. Fail-over: a second worker joins (it takes half the partitions and keeps
  standby copies of the rest); once its standbys are caught up (``standby_lag`` in /health) the
  first worker is SIGKILLed: time until each of its partitions forwards again, now from the
  second worker.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any

from app.times import now_ms
from bench.contenders import Delayq
from bench.load import Job, Record
from bench.measure import Collector
from bench.scenarios import WARM_JOBS, Runner, wait_ingested
from bench.workers import DelayqWorker, rss_bytes

__all__ = ["Prober", "capacity", "recovery"]

DAY_MS = 86_400_000
PROBE_EVERY_S = 0.2


async def capacity(
    r: Runner, c: Delayq, sizes: list[int], produced: int = WARM_JOBS
) -> dict[str, Any]:
    """RSS of the only worker at each pending-job count in ``sizes`` (ascending)."""
    worker = c.worker_procs[0]
    await asyncio.sleep(2)
    rows: list[dict[str, Any]] = [{"pending": 0, "rss_bytes": rss_bytes(worker.pid)}]
    tag = r.tag("cap")
    due = now_ms() + DAY_MS
    current = 0
    for size in sizes:
        count = size - current
        started = now_ms()
        jobs = (Job(f"{tag}-{i:08d}".encode(), started, due) for i in range(current, size))
        sent = await r.gen.bulk(c.record(job, started) for job in jobs)
        produced += count
        r.log("capacity", c.name, f"{count} jobs written in {(sent.last_ms - started) / 1000:.1f}s")
        ingested = await wait_ingested(r, c, produced, 120 + count / 200, "capacity")
        if ingested is None:
            rows.append({"pending": size, "error": "not ingested in time"})
            break
        await asyncio.sleep(3)  # let RocksDB flush and the process settle
        rss = rss_bytes(worker.pid)
        previous = rows[-1]
        rows.append(
            {
                "pending": size,
                "rss_bytes": rss,
                "growth_bytes_per_job": round((rss - previous["rss_bytes"]) / count, 1),
                "ingest_per_s": round(count / max(0.001, (ingested - started) / 1000), 1),
            }
        )
        current = size
        r.log("capacity", c.name, f"{size} pending: RSS {rss / 2**20:.0f} MiB")
    top = rows[-1]
    out: dict[str, Any] = {"rows": rows}
    if "rss_bytes" in top and top["pending"]:
        out["growth_bytes_per_job"] = round(
            (top["rss_bytes"] - rows[0]["rss_bytes"]) / top["pending"], 1
        )
    out["pending"] = current
    return out


class Prober:
    """One job per ingest partition every 200 ms, due at once; first forward per partition."""

    def __init__(self, r: Runner, c: Delayq, collector: Collector) -> None:
        assert c.ns is not None
        self.r, self.c, self.collector = r, c, collector
        self.ingest = c.ns.ingest
        self.tag = r.tag("probe")
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        seq = 0
        while True:
            now = now_ms()
            for p in range(self.r.env.partitions):
                key = f"{self.tag}-{seq:06d}-{p:04d}".encode()
                headers = [
                    ("delayq-target", self.c.target.encode()),
                    ("delayq-due-ms", b"%d" % now),
                ]
                await self.r.gen._send(Record(self.ingest, key, headers, partition=p))
            seq += 1
            await asyncio.sleep(PROBE_EVERY_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def first_fires(self, after_ms: int) -> dict[int, int]:
        """Per ingest partition: the earliest forward of a probe due at or after ``after_ms``."""
        prefix = self.tag.encode()
        first: dict[int, int] = {}
        for key, arrival in list(self.collector.arrivals.items()):
            if key.startswith(prefix) and arrival.due_ms >= after_ms:
                p = int(key.rsplit(b"-", 1)[1])
                first[p] = min(first.get(p, arrival.timestamp_ms), arrival.timestamp_ms)
        return first

    async def wait_fires(
        self, after_ms: int, partitions: list[int], timeout_s: float
    ) -> dict[int, int]:
        deadline = time.monotonic() + timeout_s
        next_report = time.monotonic() + 5
        while True:
            first = self.first_fires(after_ms)
            if all(p in first for p in partitions) or time.monotonic() > deadline:
                return {p: first[p] for p in partitions if p in first}
            if time.monotonic() >= next_report:
                self.r.log(
                    "recovery", self.c.name, f"{len(first)}/{len(partitions)} partitions firing"
                )
                next_report += 5
            await asyncio.sleep(0.1)


def _fired_figures(kill_ms: int, fires: dict[int, int], partitions: list[int]) -> dict[str, Any]:
    return {
        "partitions": len(partitions),
        "partitions_firing": len(fires),
        "kill_to_first_fire_ms": min(fires.values()) - kill_ms if fires else None,
        "kill_to_all_firing_ms": max(fires.values()) - kill_ms
        if len(fires) == len(partitions)
        else None,
    }


async def _restart(
    r: Runner, c: Delayq, prober: Prober, wipe: bool, timeout_s: float
) -> dict[str, Any]:
    old = c.worker_procs[0]
    mode = "wiped" if wipe else "kept"
    kill_ms = round(old.kill() * 1000)
    c.procs.remove(old)
    if wipe:
        shutil.rmtree(old.data_dir, ignore_errors=True)
    worker = c.new_worker("w0", old.data_dir)
    worker.start()
    c.procs.append(worker)
    start_ms = now_ms()
    r.log("recovery", c.name, f"SIGKILL, restarted with data directory {mode}")
    ready = asyncio.create_task(asyncio.to_thread(_ready_ms, worker, timeout_s))
    partitions = list(range(r.env.partitions))
    fires = await prober.wait_fires(kill_ms, partitions, timeout_s)
    out = _fired_figures(kill_ms, fires, partitions)
    ready_ms = await ready
    out["start_to_ready_ms"] = None if ready_ms is None else ready_ms - start_ms
    r.log(
        "recovery",
        c.name,
        f"{mode}: all partitions firing {out['kill_to_all_firing_ms']} ms after kill",
    )
    return out


def _ready_ms(worker: DelayqWorker, timeout_s: float) -> int | None:
    try:
        worker.wait_ready(timeout_s)
    except RuntimeError:
        return None
    return now_ms()


#: A standby this close to the changelog's end is caught up: the probes alone add ~50 records/s.
CAUGHT_UP_LAG = 200


async def _wait_standby_caught_up(worker: DelayqWorker, timeout_s: float) -> tuple[float, Any]:
    """Wait until every standby partition of ``worker`` lags by at most :data:`CAUGHT_UP_LAG`
    records, twice in a row, 1 s apart; (seconds waited, the last lag seen).

    A CPU-idle worker is not proof: a standby that stopped fetching is idle too.
    """
    started = time.monotonic()
    lag: Any = None
    good = 0
    while good < 2 and time.monotonic() - started < timeout_s:
        lag = worker.health().get("standby_lag")
        ok = isinstance(lag, dict) and all(n <= CAUGHT_UP_LAG for n in lag.values())
        good = good + 1 if ok else 0
        if good < 2:
            await asyncio.sleep(1)
    return time.monotonic() - started, lag


async def _failover(r: Runner, c: Delayq, prober: Prober, timeout_s: float) -> dict[str, Any]:
    first = c.worker_procs[0]
    standby = await c.add_worker("w1", timeout=timeout_s)
    await c.wait_balanced(timeout=timeout_s)
    waited, lag = await _wait_standby_caught_up(standby, timeout_s)
    active = sorted(first.health().get("active_partitions", []))
    standby_parts = sorted(standby.health().get("standby_partitions", []))
    r.log(
        "recovery",
        c.name,
        f"standby caught up after {waited:.0f}s (lag {lag}); SIGKILL worker with {active}",
    )
    kill_ms = round(first.kill() * 1000)
    c.procs.remove(first)
    fires = await prober.wait_fires(kill_ms, active, timeout_s)
    out = _fired_figures(kill_ms, fires, active)
    out["standby_held"] = [p for p in active if p in standby_parts]
    out["standby_wait_s"] = round(waited, 1)
    out["standby_lag_at_kill"] = lag
    r.log("recovery", c.name, f"fail-over: all firing {out['kill_to_all_firing_ms']} ms after kill")
    return out


async def recovery(
    r: Runner, c: Delayq, collector: Collector, pending: int, failover: bool, timeout_s: float
) -> dict[str, Any]:
    """Restart with the data directory kept, then wiped; then fail-over (if asked)."""
    prober = Prober(r, c, collector)
    prober.start()
    try:
        partitions = list(range(r.env.partitions))
        if len(await prober.wait_fires(now_ms(), partitions, 60)) < len(partitions):
            raise RuntimeError("recovery: probes are not forwarded before the kill")
        out: dict[str, Any] = {"pending": pending}
        phases: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
            "kept": lambda: _restart(r, c, prober, wipe=False, timeout_s=timeout_s),
            "wiped": lambda: _restart(r, c, prober, wipe=True, timeout_s=timeout_s),
        }
        if failover:
            phases["failover"] = lambda: _failover(r, c, prober, timeout_s)
        for name, phase in phases.items():
            # One failed phase (e.g. a worker that crashed) keeps the figures of the others.
            try:
                out[name] = await phase()
            except Exception as exc:
                out[name] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
                r.log("recovery", c.name, f"{name} failed: {out[name]['error']}")
                if not any(w.running() for w in c.worker_procs):
                    break
        return out
    finally:
        await prober.stop()
