"""The three contenders: how each is started, fed and stopped.

- :class:`Limit`: ``python -m bench.limit`` (one Kafka hop). It gets each job when the job is
  due, with ``delayq-due-ms`` = the time the bench hands it to its producer (or the due time, for
  a backlog written before it is due), so its lateness is the time of one hop.
- :class:`Seed`: ``python -m bench.seed`` (fixed-delay topics, 1 s sleeps). A job of delay d
  goes to the topic of round(d) seconds (1..10) with record timestamp = due time - that delay:
  for a spread workload its due time is first rounded to ``schedule time + round(d) s``
  (:meth:`Seed.adapt`), the only due times the seed can honour.
- :class:`Delayq`: one or two real delayq workers; jobs go to the ingest topic with
  ``delayq-target`` and ``delayq-due-ms`` at their schedule time. ``delayq@DIR`` runs the
  worker from another checkout (e.g. ``git worktree add DIR <commit>``) with this checkout's
  libraries: a before/after comparison in one run of the bench. ``delayq/fnv1a`` (or
  ``/crc32``) is the same worker fed by a producer that partitions as sarama's default
  (librdkafka's ``consistent_random``) does: most commands land off their job's home partition
  and the worker moves them there (app/moving.py), one more produce hop each.

Each :meth:`~Contender.start` creates fresh topics named after ``tag``, so runs never share
records, and ends when the contender's processes are up (``warm_up`` in :mod:`bench.scenarios`
then checks records flow end to end).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.moving import crc32_partition, fnv1a_partition
from bench.broker import create_topics
from bench.load import Job, Record
from bench.workers import DelayqWorker, Namespace, Proc

__all__ = ["Contender", "Delayq", "Env", "Limit", "Seed", "make"]

TARGET = "delayq-target"
DUE = "delayq-due-ms"
EVERY = "delayq-every-ms"
UNTIL = "delayq-until-ms"
SEED_DELAYS_S = range(1, 11)
#: The partitioners a ``delayq/<name>`` contender's producer may use instead of murmur2.
PARTITIONERS: dict[str, Callable[[bytes, int], int]] = {
    "fnv1a": fnv1a_partition,
    "crc32": crc32_partition,
}


@dataclass
class Env:
    """What contenders need from the run."""

    bootstrap: str
    workdir: Path
    partitions: int
    log: Callable[[str], None]


def _headers(target: str, due_ms: int) -> list[tuple[str, bytes]]:
    return [(TARGET, target.encode()), (DUE, str(due_ms).encode())]


async def _wait_line(proc: Proc, line: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in proc.log_since_start():
        if not proc.running():
            raise RuntimeError(f"{proc.cmd[2]} exited early:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.cmd[2]} not ready in {timeout:.0f}s:\n{proc.output()}")
        await asyncio.sleep(0.05)


class Contender:
    """Base class: a named thing that forwards jobs from its input topics to ``target``."""

    name = "?"

    def __init__(self, env: Env) -> None:
        self.env = env
        self.target = ""
        self.procs: list[Proc] = []

    async def start(self, tag: str, start_at_ms: int | None = None) -> None:
        raise NotImplementedError

    def emit_ms(self, job: Job) -> int:
        """When the load generator sends ``job`` (epoch ms)."""
        return job.sched_ms

    def record(self, job: Job, now_ms: int) -> Record:
        raise NotImplementedError

    def adapt(self, job: Job) -> Job:
        """The job as this contender can express it (only seed changes anything)."""
        return job

    def alive(self) -> bool:
        return all(p.running() for p in self.procs)

    async def counters(self) -> dict[str, Any]:
        """The contender's own counters, if it keeps any (delayq: its workers' ``/stats``)."""
        return {}

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.running()]

    async def stop(self) -> None:
        procs, self.procs = self.procs, []
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs))

    def _log_path(self, tag: str, what: str) -> Path:
        return self.env.workdir / f"{tag}-{what}.log"


class Limit(Contender):
    name = "limit"
    #: Passed as ``--fetch-max-wait-ms`` (None: the program's default).
    fetch_wait_ms: int | None = None

    async def start(self, tag: str, start_at_ms: int | None = None) -> None:
        self.ingest, self.target = f"{tag}-limit-in", f"{tag}-limit-out"
        await create_topics(self.env.bootstrap, [self.ingest, self.target], self.env.partitions)
        cmd = [sys.executable, "-m", "bench.limit", "--bootstrap", self.env.bootstrap]
        cmd += ["--topic", self.ingest, "--partitions", str(self.env.partitions)]
        if start_at_ms is not None:
            cmd += ["--start-at-ms", str(start_at_ms)]
        if self.fetch_wait_ms is not None:
            cmd += ["--fetch-max-wait-ms", str(self.fetch_wait_ms)]
        proc = Proc(cmd, self._log_path(tag, "limit")).start()
        self.procs = [proc]
        await _wait_line(proc, "limit: ready")

    def emit_ms(self, job: Job) -> int:
        return job.due_ms

    def record(self, job: Job, now_ms: int) -> Record:
        # Sent when due: the due time is when the bench hands it over (a hop starts there).
        return Record(self.ingest, job.key, _headers(self.target, max(job.due_ms, now_ms)))


class Seed(Contender):
    name = "seed"

    async def start(self, tag: str, start_at_ms: int | None = None) -> None:
        self.prefix, self.target = f"{tag}-seed", f"{tag}-seed-out"
        topics = {f"{self.prefix}-{d}s": d * 1000 for d in SEED_DELAYS_S}
        await create_topics(self.env.bootstrap, [*topics, self.target], self.env.partitions)
        cmd = [sys.executable, "-m", "bench.seed", "--bootstrap", self.env.bootstrap]
        cmd += ["--group", f"{tag}-seed"]
        for name, delay in topics.items():
            cmd += ["--topic", f"{name}={delay}"]
        proc = Proc(cmd, self._log_path(tag, "seed")).start()
        self.procs = [proc]
        await _wait_line(proc, "seed: ready")

    @staticmethod
    def _delay_s(job: Job) -> int:
        return min(max(round((job.due_ms - job.sched_ms) / 1000), SEED_DELAYS_S[0]), 10)

    def adapt(self, job: Job) -> Job:
        return replace(job, due_ms=job.sched_ms + self._delay_s(job) * 1000)

    def record(self, job: Job, now_ms: int) -> Record:
        delay_s = self._delay_s(job)
        return Record(
            f"{self.prefix}-{delay_s}s",
            job.key,
            _headers(self.target, job.due_ms),
            timestamp_ms=job.due_ms - delay_s * 1000,
        )


class Delayq(Contender):
    """``workers`` delayq worker processes sharing one deployment (namespace).

    ``partitioner``: a key of :data:`PARTITIONERS` that picks each command's ingest partition
    (None: the load generator's murmur2, every command at its job's home).
    """

    def __init__(
        self,
        env: Env,
        workers: int = 1,
        source: Path | None = None,
        partitioner: str | None = None,
    ) -> None:
        super().__init__(env)
        self.workers = workers
        self.source = source
        self.partitioner = partitioner
        self.name = "delayq" if workers == 1 else f"delayq-{workers}w"
        if partitioner is not None:
            self.name += f"/{partitioner}"
        if source is not None:
            self.name += f"@{_commit_of(source)}"
        self.ns: Namespace | None = None
        self.data_dirs: list[Path] = []

    @property
    def worker_procs(self) -> list[DelayqWorker]:
        return [p for p in self.procs if isinstance(p, DelayqWorker)]

    async def start(self, tag: str, start_at_ms: int | None = None) -> None:
        ns = self.ns = Namespace(f"{tag}-dq", self.env.partitions)
        self.target = f"{tag}-dq-out"
        topics = [ns.ingest, ns.fired, ns.dead_letters, self.target]
        await create_topics(self.env.bootstrap, topics, self.env.partitions)
        self.procs = []
        for i in range(self.workers):
            await self.add_worker(f"w{i}")
        await self.wait_balanced()

    def new_worker(self, name: str, data_dir: Path | None = None) -> DelayqWorker:
        assert self.ns is not None
        data_dir = data_dir or self.env.workdir / f"{self.ns.prefix}-{name}-data"
        log = self.env.workdir / f"{self.ns.prefix}-{name}.log"
        worker = DelayqWorker(self.env.bootstrap, self.ns, data_dir, log)
        if self.source is not None:
            worker.cwd = self.source
        return worker

    async def add_worker(
        self, name: str, data_dir: Path | None = None, timeout: float = 120.0
    ) -> DelayqWorker:
        worker = self.new_worker(name, data_dir)
        worker.start()
        self.procs.append(worker)
        self.data_dirs.append(worker.data_dir)
        await asyncio.to_thread(worker.wait_ready, timeout)
        return worker

    async def wait_balanced(self, timeout: float = 60.0) -> dict[int, list[int]]:
        """Wait until the live workers are ready and own every partition between them."""
        deadline = time.monotonic() + timeout
        while True:
            workers = [w for w in self.worker_procs if w.running()]
            bodies = await asyncio.gather(*(asyncio.to_thread(w.health) for w in workers))
            active = {
                w.pid: list(b.get("active_partitions", []))
                for w, b in zip(workers, bodies, strict=True)
            }
            owned = sorted(p for parts in active.values() for p in parts)
            ready = all(b.get("status") == "ok" for b in bodies)
            if ready and owned == list(range(self.env.partitions)) and all(active.values()):
                return active
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: workers not balanced in {timeout:.0f}s: {bodies}")
            await asyncio.sleep(0.2)

    def record(self, job: Job, now_ms: int) -> Record:
        assert self.ns is not None
        partition = None
        if self.partitioner is not None:
            partition = PARTITIONERS[self.partitioner](job.key, self.env.partitions)
        return Record(
            self.ns.ingest, job.key, _headers(self.target, job.due_ms), partition=partition
        )

    def record_series(self, job: Job, every_ms: int, occurrences: int) -> Record:
        """A recurring job: its first occurrence at ``job.due_ms``, then one every
        ``every_ms``, ``occurrences`` in all (``delayq-until-ms`` = the last one)."""
        record = self.record(job, job.sched_ms)
        until_ms = job.due_ms + (occurrences - 1) * every_ms
        rule = [(EVERY, str(every_ms).encode()), (UNTIL, str(until_ms).encode())]
        return replace(record, headers=[*record.headers, *rule])

    async def counters(self) -> dict[str, Any]:
        """The live workers' ``/stats`` counters, summed, and each one's ``move_lag_ms``
        (nothing if a worker did not answer: a partial sum would pass for a figure)."""
        workers = [w for w in self.worker_procs if w.running()]
        bodies = await asyncio.gather(*(asyncio.to_thread(w.get_json, "/stats") for w in workers))
        if not bodies or any("counters" not in body for body in bodies):
            return {}
        totals: dict[str, int] = {}
        for body in bodies:
            for name, value in body.get("counters", {}).items():
                totals[name] = totals.get(name, 0) + value
        lags = [b["move_lag_ms"] for b in bodies if "move_lag_ms" in b]
        return {"counters": totals, "move_lag_ms": lags}

    async def stop(self) -> None:
        await super().stop()
        for path in self.data_dirs:
            shutil.rmtree(path, ignore_errors=True)
        self.data_dirs = []


def _commit_of(source: Path) -> str:
    """The short commit checked out in ``source`` (its directory name if it is no checkout)."""
    found = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or source.name


def make(name: str, env: Env) -> Contender:
    """A contender by name: limit, seed, or ``delayq[-2w][/fnv1a|/crc32][@DIR]``.

    ``-2w``: two workers; ``/fnv1a``, ``/crc32``: the producer's partitioner
    (:data:`PARTITIONERS`); ``@DIR``: the worker of another checkout.
    """
    if name == "limit":
        return Limit(env)
    if name == "seed":
        return Seed(env)
    kind, at, where = name.partition("@")
    base, _, partitioner = kind.partition("/")
    workers = {"delayq": 1, "delayq-2w": 2}.get(base)
    if workers is None or (partitioner and partitioner not in PARTITIONERS):
        raise ValueError(f"unknown contender {name!r}")
    source = None
    if at:
        source = Path(where).resolve()
        if not (source / "app" / "__init__.py").exists():
            raise ValueError(f"{source} is not a delayq checkout (no app/__init__.py)")
    return Delayq(env, workers, source, partitioner or None)
