"""The scenarios that compare contenders: steady, throughput and burst.

Every measurement starts its contender on fresh topics, checks that records flow end to end
(:func:`warm_up`, a few jobs due at once, not measured), then runs its workload and reads the
target topic with a :class:`~bench.measure.Collector` until every job arrived or time is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.times import now_ms
from bench.broker import CommittedOffsets
from bench.contenders import Contender, Delayq, Env, Limit, make
from bench.load import Generator, Job, LoadStats, burst_plan, spread_plan
from bench.measure import Collector, summarize
from bench.workers import Proc, cpu_seconds

__all__ = [
    "WARM_JOBS",
    "Runner",
    "burst",
    "cpu_of",
    "session",
    "steady",
    "throughput",
    "wait_ingested",
    "warm_up",
]

P99_LIMIT_MS = 100
#: limit's Fetch wait in the rate search: what delayq's consumers get on Tansu (quirk 5 in
#: app/tansu_compat.py). Its default, 10 ms, suits draining a backlog.
PACED_LIMIT_FETCH_WAIT_MS = 100
WARM_JOBS = 8
THROUGHPUT_DELAY_MS = (3_000, 4_000)


@dataclass
class Runner:
    """The run's broker address, load generator, scratch directory and progress output."""

    env: Env
    gen: Generator
    #: Where to write a py-spy profile of the delayq worker during its burst (None: no profile).
    profile: Path | None = None
    #: Starts a new broker in place of the current one and returns its bootstrap address
    #: (None: every contender shares the run's broker).
    new_broker: Callable[[], Awaitable[str]] | None = None
    #: The current broker's process id (None: unknown, no broker CPU figures).
    broker_pid: Callable[[], int | None] = lambda: None
    started: float = field(default_factory=time.monotonic)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    _tags: itertools.count[int] = field(default_factory=itertools.count)
    #: The broker the run started with has served no session yet: the first session takes it.
    _broker_unused: bool = True

    def tag(self, what: str) -> str:
        """A topic-name prefix unique in this run."""
        return f"b{self.run_id}-{next(self._tags):02d}{what}"

    def log(self, scenario: str, contender: str, message: str) -> None:
        elapsed = time.monotonic() - self.started
        self.env.log(f"[{elapsed:7.1f}s] {scenario:<10} {contender:<10} {message}")

    async def renew_broker(self) -> None:
        """Move the run (and its load generator) to a new, empty broker.

        Tansu keeps everything it was sent in memory, and its Fetch slows down with a
        partition's history (quirk 7 in app/tansu_compat.py). Each contender session starts on
        an empty broker, so that no measurement can depend on what ran before it.
        """
        if self.new_broker is None:
            return
        if self._broker_unused:
            self._broker_unused = False
            return
        await self.gen.stop()
        self.env.bootstrap = await self.new_broker()
        self.gen = Generator(self.env.bootstrap)
        await self.gen.start()


async def warm_up(
    r: Runner, c: Contender, collector: Collector, tag: str, n: int = WARM_JOBS
) -> None:
    """A few jobs due now: the contender forwards them (metadata fetched, group joined)."""
    now = now_ms()
    jobs = [c.adapt(Job(f"{tag}-warm-{i}".encode(), now - 1_000, now)) for i in range(n)]
    await r.gen.bulk(c.record(job, now) for job in jobs)
    if not await collector.wait_for([j.key for j in jobs], 90, stop_early=lambda: not c.alive()):
        detail = "" if c.alive() else f" (it exited:\n{c.procs[0].output()})"
        raise RuntimeError(f"{c.name}: warm-up jobs were not forwarded{detail}")


@contextlib.asynccontextmanager
async def session(
    r: Runner,
    name: str,
    tag: str,
    start_at_ms: int | None = None,
    warm: bool = True,
    limit_fetch_wait_ms: int | None = None,
    fresh_broker: bool = True,
) -> AsyncIterator[tuple[Contender, Collector]]:
    """A started (and warmed-up) contender with a collector on its target; stopped on exit.

    ``fresh_broker``: on a new, empty broker (see :meth:`Runner.renew_broker`).
    """
    if fresh_broker:
        await r.renew_broker()
    c = make(name, r.env)
    if isinstance(c, Limit) and limit_fetch_wait_ms is not None:
        c.fetch_wait_ms = limit_fetch_wait_ms
    collector: Collector | None = None
    try:
        started = time.monotonic()
        # Topic names allow only [A-Za-z0-9._-] (a contender's name may hold a commit: "@").
        await c.start(re.sub(r"[^A-Za-z0-9._-]", "-", f"{tag}-{c.name}"), start_at_ms)
        collector = await Collector(r.env.bootstrap, c.target).start(r.env.partitions)
        if warm:
            await warm_up(r, c, collector, tag)
        r.log("start", name, f"ready in {time.monotonic() - started:.1f}s (pids {c.pids()})")
        yield c, collector
    finally:
        if collector is not None:
            await collector.stop()
        await c.stop()


def _load_fields(load: LoadStats) -> dict[str, Any]:
    return {
        "sent": load.sent,
        "send_errors": load.errors,
        "send_rate": round(load.rate, 1),
        "send_max_lag_ms": load.max_lag_ms,
    }


def cpu_of(pids: Sequence[int | None]) -> float:
    """CPU seconds (user + system) the processes ``pids`` have used so far."""
    total = 0.0
    for pid in pids:
        if pid is not None:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
    return total


async def _paced_run(
    r: Runner,
    scenario: str,
    c: Contender,
    collector: Collector,
    jobs: Sequence[Job],
    grace_s: float,
    own_broker: bool = True,
) -> dict[str, Any]:
    """Send ``jobs`` on time, wait for them on the target; lateness summary plus load figures.

    ``own_broker``: the contender is alone on its broker, whose CPU per job is then its own too.
    """

    def sent(load: LoadStats) -> None:
        r.log(scenario, c.name, f"sent {load.sent}/{len(jobs)}, received {collector.count(keys)}")

    keys = [job.key for job in jobs]
    counters_before = await c.counters()
    broker = [r.broker_pid()] if own_broker else []
    cpu_before, broker_before = cpu_of(c.pids()), cpu_of(broker)
    load = await r.gen.paced(jobs, c.emit_ms, c.record, sent)
    last_due = max(job.due_ms for job in jobs)
    timeout = max(0.0, (last_due - now_ms()) / 1000) + grace_s
    await collector.wait_for(
        keys,
        timeout,
        lambda n: r.log(scenario, c.name, f"received {n}/{len(keys)}"),
        stop_early=lambda: not c.alive(),
    )
    out = summarize(collector.lateness(keys), len(keys), collector.duplicates, with_cdf=True)
    receipt = summarize(collector.receipt_lateness(keys), len(keys))
    out["receipt_p50_ms"], out["receipt_p99_ms"] = receipt["p50_ms"], receipt["p99_ms"]
    out.update(_load_fields(load))
    # CPU per job: what the contender's processes spent (less sensitive to a busy machine).
    out["cpu_ms_per_job"] = round((cpu_of(c.pids()) - cpu_before) * 1000 / max(1, len(keys)), 3)
    if broker and broker[0] is not None:
        spent = cpu_of(broker) - broker_before
        out["broker_cpu_ms_per_job"] = round(spent * 1000 / max(1, len(keys)), 3)
    out.update(_moves(counters_before, await c.counters()))
    if not c.alive():
        out["error"] = f"{c.name} exited during the run"
    moved = f", moved {out['moved']}" if "moved" in out else ""
    r.log(
        scenario,
        c.name,
        f"delivered {out['delivered']}/{len(keys)} p50 {out['p50_ms']} p99 {out['p99_ms']} "
        f"max {out['max_ms']} ms, early {out['early']}{moved}",
    )
    return out


def _moves(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """delayq's moves during a run: commands moved to their home partition (acknowledged),
    moves skipped at home, and each worker's ``move_lag_ms`` at the end (its last 10,000)."""
    if "counters" not in after:
        return {}
    old, new = before.get("counters", {}), after["counters"]
    out: dict[str, Any] = {
        name: new.get(name, 0) - old.get(name, 0) for name in ("moved", "moves_skipped")
    }
    out["move_lag_ms"] = after.get("move_lag_ms", [])
    return out


# --- steady --------------------------------------------------------------------------------


async def steady(
    r: Runner,
    names: Sequence[str],
    rate: float,
    duration_s: float,
    delay_ms: tuple[int, int] = (1_000, 10_000),
    parallel: bool = False,
) -> dict[str, Any]:
    """``rate`` jobs/s for ``duration_s`` with delays spread over ``delay_ms``, per contender.

    ``parallel``: all contenders at once (each gets the whole workload on its own topics),
    which shortens the quick mode; otherwise one after the other.
    """
    results: dict[str, Any] = {}
    groups = [list(names)] if parallel else [[name] for name in names]
    for group in groups:
        tag = r.tag("st")
        await r.renew_broker()  # side by side: the group shares one new broker
        async with contextlib.AsyncExitStack() as stack:
            started = [
                await stack.enter_async_context(session(r, n, tag, fresh_broker=False))
                for n in group
            ]
            plan = spread_plan(tag, now_ms() + 500, rate, duration_s, delay_ms, seed=1)
            runs = [
                _paced_run(
                    r,
                    "steady",
                    c,
                    col,
                    [c.adapt(job) for job in plan],
                    grace_s=30,
                    own_broker=len(started) == 1,
                )
                for c, col in started
            ]
            for (c, _col), out in zip(started, await asyncio.gather(*runs), strict=True):
                results[c.name] = out
    return {
        "rate": rate,
        "duration_s": duration_s,
        "delay_ms": list(delay_ms),
        "parallel": parallel,
        "contenders": results,
    }


# --- burst ---------------------------------------------------------------------------------


async def wait_ingested(
    r: Runner, c: Delayq, total: int, timeout_s: float, scenario: str
) -> int | None:
    """Epoch ms at which the workers' group had committed ``total`` ingest offsets (or None)."""
    assert c.ns is not None
    deadline = time.monotonic() + timeout_s
    next_report = time.monotonic() + 5
    offsets = await CommittedOffsets(
        r.env.bootstrap, c.ns.app_id, c.ns.ingest, r.env.partitions
    ).start()
    try:
        while time.monotonic() < deadline and c.alive():
            done = await offsets.total()
            if done >= total:
                return now_ms()
            if time.monotonic() >= next_report:
                r.log(scenario, c.name, f"ingested {done}/{total}")
                next_report += 5
            await asyncio.sleep(0.25)
    finally:
        await offsets.stop()
    return None


#: Assumed speeds for a burst's lead time: the jobs are written (and, by delayq, ingested)
#: before they are due. Measured on a 2-core machine: ~25k records/s written, ~2k jobs/s
#: ingested by one worker. ``ingested_before_due_ms`` < 0 in the JSON says the guess was short.
WRITE_PER_MS = 20
DELAYQ_INGEST_PER_MS = 1.25
PROFILE_S = 20


def _lead_ms(name: str, count: int) -> int:
    lead = 1_500 + count / WRITE_PER_MS
    if name.startswith("delayq"):
        lead += count / DELAYQ_INGEST_PER_MS
    return round(lead)


async def _profile(r: Runner, pid: int, start_ms: int) -> Proc | None:
    """py-spy on ``pid`` from ``start_ms`` for PROFILE_S seconds, into ``r.profile``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if r.profile is None:
        return None
    if not Path(spy).exists():
        r.log("burst", "delayq", "py-spy not found: no profile")
        return None
    await asyncio.sleep(max(0.0, (start_ms - now_ms()) / 1000))
    cmd = [spy, "record", "-o", str(r.profile), "--pid", str(pid), "--duration", str(PROFILE_S)]
    log = r.env.workdir / "py-spy.log"
    return Proc([*cmd, "--nonblocking"], log).start()


async def _profile_done(proc: Proc | None) -> bool:
    """Wait for py-spy to finish its recording (it stops by itself after PROFILE_S)."""
    if proc is None:
        return False
    deadline = time.monotonic() + PROFILE_S + 30
    while proc.running() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    proc.stop()
    return True


async def burst_one(r: Runner, name: str, count: int, scenario: str = "burst") -> dict[str, Any]:
    """``count`` jobs due in the same millisecond, written before it: until the last forward."""
    tag = r.tag("bu")
    # limit forwards whatever it reads: it is told to start reading at the due time.
    limit_start = now_ms() + 1_000 + _lead_ms(name, count) if name == "limit" else None
    async with session(r, name, tag, start_at_ms=limit_start, warm=name != "limit") as (c, col):
        due = limit_start or now_ms() + _lead_ms(name, count)
        spy = None
        if isinstance(c, Delayq) and r.profile is not None:
            spy = asyncio.create_task(_profile(r, c.pids()[0], due - 200))
        jobs = [c.adapt(job) for job in burst_plan(tag, count, due)]
        keys = [job.key for job in jobs]
        written = await r.gen.bulk(c.record(job, now_ms()) for job in jobs)
        out: dict[str, Any] = {"count": count, "written_before_due_ms": due - written.last_ms}
        r.log(scenario, name, f"{count} jobs written, due in {due - now_ms()} ms")
        if isinstance(c, Delayq):
            total = count + WARM_JOBS
            ingested = await wait_ingested(r, c, total, max(60, count / 500), scenario)
            out["ingested_before_due_ms"] = None if ingested is None else due - ingested
        await col.wait_for(
            keys,
            max(0, due - now_ms()) / 1000 + max(60, count / 200),
            lambda n: r.log(scenario, name, f"received {n}/{count}"),
            stop_early=lambda: not c.alive(),
        )
        lateness = col.lateness(keys)
        out.update(summarize(lateness, count, col.duplicates))
        last = max(lateness, default=None)
        out["last_forwarded_after_ms"] = last
        out["rate_per_s"] = round(len(lateness) / (last / 1000)) if last and last > 0 else None
        if spy is not None and await _profile_done(await spy):
            r.log(scenario, name, f"profile written to {r.profile}")
    r.log(
        scenario,
        name,
        f"delivered {out['delivered']}/{count}, last after {last} ms ({out['rate_per_s']}/s)",
    )
    return out


async def burst(r: Runner, names: Sequence[str], count: int) -> dict[str, Any]:
    return {"count": count, "contenders": {n: await burst_one(r, n, count) for n in names}}


# --- throughput ----------------------------------------------------------------------------


@dataclass
class _Search:
    """Doubling until a step fails, then bisecting between the best pass and the first fail."""

    rate: float
    bisections: int
    floor: float
    good: float | None = None
    bad: float | None = None

    def next(self, passed: bool) -> float | None:
        if passed:
            self.good = self.rate
        else:
            self.bad = self.rate
        if self.bad is None:
            self.rate *= 2
            return self.rate
        if self.good is None:
            self.rate /= 2
            return self.rate if self.rate >= self.floor else None
        if self.bisections <= 0 or self.bad - self.good <= 0.1 * self.good:
            return None
        self.bisections -= 1
        self.rate = round((self.good + self.bad) / 2, -1)
        return self.rate


async def _rate_step(
    r: Runner, c: Contender, col: Collector, rate: float, step_s: float, tag: str
) -> dict[str, Any]:
    plan = spread_plan(tag, now_ms() + 300, rate, step_s, THROUGHPUT_DELAY_MS, seed=2)
    out = await _paced_run(r, "throughput", c, col, [c.adapt(j) for j in plan], grace_s=20)
    kept_up = out["send_rate"] >= 0.95 * rate and out["send_max_lag_ms"] < 500
    out["rate"] = rate
    out["generator_kept_up"] = kept_up
    out["passed"] = bool(
        out["missing"] == 0
        and out["p99_ms"] is not None
        and out["p99_ms"] < P99_LIMIT_MS
        and out["send_errors"] == 0
        and kept_up
        and "error" not in out
    )
    r.log("throughput", c.name, f"{rate:.0f}/s: {'pass' if out['passed'] else 'fail'}")
    out.pop("cdf", None)
    return out


async def rate_search(
    r: Runner, name: str, start: float, step_s: float, bisections: int, max_steps: int = 12
) -> dict[str, Any]:
    """The highest rate (jobs/s, delays 1-2 s) whose p99 lateness stays under 100 ms."""
    search = _Search(start, bisections, floor=start / 2)
    steps: list[dict[str, Any]] = []
    rate: float | None = start
    while rate is not None and len(steps) < max_steps:
        tag = r.tag("tp")
        # Every step gets a fresh contender on fresh topics: a failed step may leave a backlog,
        # and Tansu's Fetch cost grows with the record batches a partition holds (quirk 7 in
        # app/tansu_compat.py), so on topics holding the steps before it a step would pay for
        # those steps too.
        async with session(r, name, tag, limit_fetch_wait_ms=PACED_LIMIT_FETCH_WAIT_MS) as (
            c,
            col,
        ):
            step = await _rate_step(r, c, col, rate, step_s, f"{tag}-{len(steps)}")
        steps.append(step)
        rate = search.next(step["passed"])
    generator_bound = any(not s["generator_kept_up"] for s in steps)
    return {"jobs_per_s": search.good, "generator_bound": generator_bound, "steps": steps}


async def throughput(
    r: Runner,
    names: Sequence[str],
    start_rate: float,
    step_s: float,
    bisections: int,
    drain_count: int,
    max_steps: int = 12,
) -> dict[str, Any]:
    """Rate search for each; limit also: messages/s draining a backlog of ``drain_count``."""
    out: dict[str, Any] = {"p99_limit_ms": P99_LIMIT_MS, "delay_ms": list(THROUGHPUT_DELAY_MS)}
    results: dict[str, Any] = {}
    for name in names:
        if name == "limit":
            drained = await burst_one(r, "limit", drain_count, scenario="throughput")
            # The same paced rate search as the others. limit reads each job when it is due, so
            # its lateness holds the broker's Fetch latency; delayq reads its jobs seconds ahead.
            paced = await rate_search(r, name, start_rate, step_s, bisections, max_steps)
            results[name] = {"msgs_per_s": drained["rate_per_s"], "drain": drained, "paced": paced}
        else:
            results[name] = await rate_search(r, name, start_rate, step_s, bisections, max_steps)
    limit = results.get("limit", {})
    limit_rate = limit.get("msgs_per_s")
    paced_rate = limit.get("paced", {}).get("jobs_per_s")
    for name, res in results.items():
        if name != "limit" and limit_rate and res.get("jobs_per_s"):
            res["ratio_to_limit"] = round(res["jobs_per_s"] / limit_rate, 4)
        if name != "limit" and paced_rate and res.get("jobs_per_s"):
            res["ratio_to_limit_paced"] = round(res["jobs_per_s"] / paced_rate, 4)
    out["contenders"] = results
    return out
