"""One chaos run: cluster up, load and disruptions, then the reconciliation.

Timeline (``duration_s`` = D, every time bounded):

1. an embedded broker on a free port, the topics, ``workers`` delayq workers; wait until they
   are ready and every partition is active somewhere;
2. the load generator for D seconds; meanwhile the disruptions, each at its fraction of D (or
   when the previous one has recovered, if later): ``kill`` (SIGKILL a worker, start it again
   with its data directory after ``restart_after_s``), ``add`` (one more worker), ``term``
   (SIGTERM a worker: it leaves for good), ``freeze`` (SIGSTOP a worker for longer than its
   session timeout, then SIGCONT: a long GC pause or a stalled VM; its partitions move while it
   sleeps, and it wakes believing it still owns them), ``pause`` (SIGSTOP the broker for
   ``pause_s``, then SIGCONT). A disruption's window lasts until every live worker is ready
   again and every partition is active somewhere;
3. the reconciler reads the ingest topic, then follows the target topics until every expected
   job has been forwarded, or until ``grace_s`` after the last due time with no progress for
   ``quiet_s``, or until the run's hard limit (``max_total_s`` from the start);
4. the dead-letter topic, a look at never-forwarded jobs through the workers' HTTP API, figures.

Everything started is stopped on the way out (``Cluster.close``), Ctrl-C and errors included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app import tansu_compat
from app.metrics import quantile
from app.times import now_ms
from chaos.acks import AckTimes
from chaos.cluster import Cluster, Names, Worker
from chaos.figures import book_figures, failures
from chaos.forensics import duplicate_cause, format_events, superseded_cause
from chaos.load import PARTITIONERS, LoadConfig, LoadGenerator, LoadStats
from chaos.reconcile import (
    BEFORE_DUE,
    Book,
    Cmd,
    Follower,
    Forward,
    JobLog,
    changelog_history,
    read_to_end,
)
from chaos.report import table

__all__ = ["EVENTS", "ChaosConfig", "run"]

EVENTS = ("kill", "add", "term", "freeze", "pause")
#: Setup (broker, topics, workers ready) and teardown, reserved out of ``max_total_s``.
SETUP_RESERVE_S = 40.0
TEARDOWN_RESERVE_S = 30.0
TARGETS = (("out-a", 4), ("out-b", 6))
_LOG_PATTERNS = {
    "errors": re.compile(r"\bERROR\b|\bCRITICAL\b"),
    "tracebacks": re.compile(r"^Traceback", re.M),
    "forward failures": re.compile(r"forward to .* failed"),
    "dead-lettered": re.compile(r"dead-lettering"),
    "firing pass failed": re.compile(r"firing pass failed"),
    "changelog write failed": re.compile(r"changelog write failed"),
    "assignments": re.compile(r"Setting newly assigned partitions"),
    "session expired": re.compile(r"Heartbeat session expired"),
    "commit overlapping": re.compile(r"Timer commit is overlapping"),
}
_EXCERPT = re.compile(
    r"=== chaos|Revoking|Setting newly assigned|Seek stream|Worker ready|OffsetCommit failed"
    r"|Heartbeat|\bERROR\b|CRITICAL|Timer commit"
)
_LOG_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]")
_MARK_STAMP = re.compile(r"^=== chaos [\d:.]+ \((\d+)\)")


def _log_time_ms(line: str) -> int | None:
    """Epoch ms of a worker log line (Faust's local time stamp, or a chaos mark's)."""
    mark = _MARK_STAMP.match(line)
    if mark:
        return int(mark.group(1))
    stamp = _LOG_STAMP.match(line)
    if stamp is None:
        return None
    seconds = time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S"))
    return int(seconds) * 1000 + int(stamp.group(2))


#: The workers' counters (``GET /stats``) the run adds up over every worker process.
_SUMMED_COUNTERS = ("moved", "moves_skipped", "rescheduled", "occurrences_skipped")
#: Kept for reading the jobs changelog when there is something to explain.
FORENSICS_RESERVE_S = 60.0
#: How long the reconciler waits, after the load, for the workers to commit the ingest topic
#: (moves included) before reading it.
CATCH_UP_S = 60.0
#: The shortest automatic freeze: the group must notice the silence and move the frozen
#: worker's partitions before it wakes, even with the embedded broker's 2 s session timeout.
MIN_FREEZE_S = 8.0


@dataclass(frozen=True)
class ChaosConfig:
    rate: float = 2_000.0
    duration_s: float = 240.0
    workers: int = 3
    partitions: int = 12
    standby_replicas: int = 1
    max_delay_s: float = 60.0
    #: (event, fraction of duration_s at which it starts), in order.
    events: tuple[tuple[str, float], ...] = (
        ("kill", 0.15),
        ("add", 0.30),
        ("term", 0.45),
        ("freeze", 0.60),
        ("pause", 0.75),
    )
    pause_s: float = 10.0
    #: How long ``freeze`` stops a worker (0: the longer of 3 session timeouts and
    #: ``MIN_FREEZE_S``, so that its partitions surely move while it sleeps).
    freeze_s: float = 0.0
    restart_after_s: float = 3.0
    grace_s: float = 45.0
    quiet_s: float = 20.0
    #: Jobs due within this long after a disruption recovered still count as disrupted.
    settle_s: float = 10.0
    max_total_s: float = 600.0
    progress_s: float = 5.0
    #: The generator pauses while the workers' backlog exceeds this many seconds of their
    #: recent ingest pace (0: open loop, ``rate`` whatever happens).
    max_lag_s: float = 10.0
    seed: int = 1
    #: The producer partitioners the load mixes (chaos/load.py), and the share of jobs whose
    #: replaces and cancels go through another one than their first schedule.
    partitioners: tuple[str, ...] = tuple(PARTITIONERS)
    mixed_share: float = 0.2
    #: Share of new jobs that are recurring (chaos/load.py): a few hundred series in a full run.
    recurring_share: float = 0.001
    out_dir: Path = Path("chaos/results")
    write_latest: bool = True
    command: str = ""

    def check(self) -> None:
        """Refuse plans that cannot finish inside ``max_total_s``."""
        for name, fraction in self.events:
            if name not in EVENTS or not 0 <= fraction < 1:
                raise ValueError(f"bad event {name}@{fraction}: events are {EVENTS} at [0, 1)")
        if self.workers < 1 or self.rate <= 0 or self.duration_s <= 0:
            raise ValueError("workers, rate and duration must be positive")
        if {"kill", "term", "freeze"} & dict(self.events).keys() and self.workers < 2:
            raise ValueError(
                "kill, term and freeze need at least 2 workers (someone must take over)"
            )
        if self.freeze_s < 0:
            raise ValueError("freeze must be 0 (automatic) or positive")
        names = self.partitioners
        if not names or len(set(names)) != len(names) or not set(names) <= PARTITIONERS.keys():
            raise ValueError(
                f"bad partitioners {','.join(names)!r}: one or more of {', '.join(PARTITIONERS)}"
                ", each once"
            )
        if not 0 <= self.mixed_share <= 1:
            raise ValueError("the mixed share must be in [0, 1]")
        if not 0 <= self.recurring_share <= 1:
            raise ValueError("the recurring share must be in [0, 1]")
        needed = (
            SETUP_RESERVE_S + self.duration_s + self.max_delay_s + self.grace_s
        ) + TEARDOWN_RESERVE_S
        if needed > self.max_total_s:
            raise ValueError(
                f"the plan needs about {needed:.0f} s (setup {SETUP_RESERVE_S:.0f} + duration "
                f"{self.duration_s:.0f} + max delay {self.max_delay_s:.0f} + grace "
                f"{self.grace_s:.0f} + teardown {TEARDOWN_RESERVE_S:.0f}), more than the "
                f"limit of {self.max_total_s:.0f} s: shorten it"
            )


@dataclass
class Window:
    """One disruption: from its start until the cluster covered every partition again."""

    name: str
    start_ms: int
    end_ms: int = 0
    recovered: bool = False
    note: str = ""


@dataclass
class State:
    """What the progress lines show."""

    phase: str = "setup"
    disruption: str = "-"
    windows: list[Window] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)


Printer = Callable[[str], None]


async def create_topics(bootstrap: str, topics: list[tuple[str, int]]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(name, n, 1) for name, n in topics if name not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


class Monitor:
    """Cheap progress figures: committed ingest offsets of the workers' group, end offsets."""

    def __init__(self, bootstrap: str, names: Names) -> None:
        self.names = names
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=names.app_id,  # only reads its committed offsets: it never joins
            enable_auto_commit=False,
            request_timeout_ms=10_000,
        )
        self.ingest = [TopicPartition(names.ingest, p) for p in range(names.partitions)]
        self.targets = [
            TopicPartition(f"{names.prefix}-{suffix}", p)
            for suffix, n in names.targets
            for p in range(n)
        ]

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.assign(self.ingest)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def committed(self) -> dict[int, int]:
        """The workers' committed offset of each ingest partition (0 where none)."""
        offsets = await asyncio.gather(*(self.consumer.committed(tp) for tp in self.ingest))
        return {tp.partition: offset or 0 for tp, offset in zip(self.ingest, offsets, strict=True)}

    async def sample(self) -> tuple[int, int, int]:
        """(ingest records committed by the workers, ingest records not yet, records on the
        target topics)."""
        committed = await self.committed()
        ends = await self.consumer.end_offsets(self.ingest + self.targets)
        backlog = sum(max(0, ends[tp] - committed[tp.partition]) for tp in self.ingest)
        forwarded = sum(ends[tp] for tp in self.targets)
        return sum(committed.values()), backlog, forwarded


class Run:
    def __init__(self, cfg: ChaosConfig, out: Printer) -> None:
        self.cfg = cfg
        self.out = out
        self.started = time.monotonic()
        self.started_ms = now_ms()
        self.hard_deadline = self.started + cfg.max_total_s - TEARDOWN_RESERVE_S
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = cfg.out_dir / f"run-{stamp}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.names = Names(f"chaos{uuid.uuid4().hex[:8]}", cfg.partitions, TARGETS)
        self.data_root = Path(tempfile.mkdtemp(prefix="delayq-chaos-"))
        self.cluster = Cluster(
            self.names,
            self.run_dir,
            self.data_root,
            DELAYQ_STANDBY_REPLICAS=str(cfg.standby_replicas),
        )
        self.state = State()
        self.loadavg_start = list(os.getloadavg())
        self.load: LoadGenerator | None = None
        self.monitor: Monitor | None = None
        self.forwards: Follower | None = None
        self.committed: dict[int, int] = {}
        self.load_t0 = 0.0
        #: When the broker acknowledged each command: noted by the generator, read by the book.
        self.acks = AckTimes()
        self.book = Book(self.acks, cfg.partitions)
        #: What the workers run with (the forensics and the freeze depend on it).
        self.worker_settings = self.cluster.worker_settings()
        self.session_timeout_s = self.cluster.worker_session_timeout_s()
        self.freeze_s = cfg.freeze_s or max(3 * self.session_timeout_s, MIN_FREEZE_S)
        self._progress_log = (self.run_dir / "progress.log").open("a")
        #: (worker, start number) -> the counters of its last ``GET /stats`` the run adds up.
        self.worker_counters: dict[tuple[str, int], dict[str, Any]] = {}

    def say(self, line: str) -> None:
        elapsed = time.monotonic() - self.started
        text = f"[{elapsed:6.1f}s] {line}"
        self.out(text)
        self._progress_log.write(text + "\n")
        self._progress_log.flush()

    # -- setup --------------------------------------------------------------------------------

    async def setup(self) -> None:
        cfg, names = self.cfg, self.names
        self.cluster.start_broker()
        tansu_compat.install()  # correct end offsets in this process (it talks to Tansu only)
        bootstrap = self.cluster.broker.bootstrap
        self.say(
            f"broker {bootstrap} (pid {self.cluster.broker.pid}); run dir {self.run_dir}; "
            f"topics {names.prefix}-*, {cfg.partitions} partitions"
        )
        topics = [(names.ingest, cfg.partitions), (names.fired, cfg.partitions)]
        topics += [(names.dead_letters, cfg.partitions)]
        topics += [(f"{names.prefix}-{suffix}", n) for suffix, n in names.targets]
        await create_topics(bootstrap, topics)
        workers = [self.cluster.new_worker().start() for _ in range(cfg.workers)]
        await asyncio.gather(*(w.await_ready() for w in workers))
        if not await self.cluster.settled(60):
            raise RuntimeError(f"workers never covered every partition: {self.cluster.coverage()}")
        self.say(f"{cfg.workers} workers ready: " + self._assignment())

    def _assignment(self) -> str:
        parts = []
        for w in self.cluster.live():
            body = w.health()
            parts.append(f"{w.name}={body.get('active_partitions')}")
        return " ".join(parts)

    # -- disruptions --------------------------------------------------------------------------

    def _victim(self, touched: list[str]) -> Worker:
        """The live worker disrupted least (never disrupted first, then least recently)."""
        live = self.cluster.live()
        if len(live) < 2:
            raise RuntimeError("fewer than 2 live workers: nobody would take over")

        def rank(worker: Worker) -> tuple[int, int]:
            if worker.name not in touched:
                return (0, 0)
            return (1, max(i for i, name in enumerate(touched) if name == worker.name))

        return min(live, key=rank)

    async def disruptions(self) -> None:
        cfg = self.cfg
        touched: list[str] = []
        for name, fraction in cfg.events:
            at = self.load_t0 + fraction * cfg.duration_s
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            window = Window(name, now_ms())
            self.state.windows.append(window)
            if name == "kill":
                victim = self._victim(touched)
                touched.append(victim.name)
                self._disrupt(f"SIGKILL {victim.name}", window)
                await self.sample_counters([victim])
                victim.kill()
                await asyncio.sleep(cfg.restart_after_s)
                self._disrupt(f"{victim.name} restarting (data dir kept)", window)
                await victim.start().await_ready()
                window.note = f"{victim.name} SIGKILLed, restarted after {cfg.restart_after_s} s"
            elif name == "add":
                worker = self.cluster.new_worker()
                touched.append(worker.name)
                self._disrupt(f"adding {worker.name}", window)
                await worker.start().await_ready()
                window.note = f"{worker.name} added"
            elif name == "term":
                victim = self._victim(touched)
                touched.append(victim.name)
                self._disrupt(f"SIGTERM {victim.name}", window)
                await self.sample_counters([victim])
                code = await asyncio.to_thread(victim.stop)
                window.note = f"{victim.name} left (SIGTERM, exit code {code})"
            elif name == "freeze":
                victim = self._victim(touched)
                touched.append(victim.name)
                self._disrupt(f"SIGSTOP {victim.name} for {self.freeze_s:.0f} s", window)
                await self.sample_counters([victim])
                await _suspended(victim.freeze, victim.thaw, self.freeze_s)
                self._disrupt(f"{victim.name} resumed (SIGCONT)", window)
                window.note = (
                    f"{victim.name} frozen {self.freeze_s:.0f} s (SIGSTOP; session timeout "
                    f"{self.session_timeout_s:g} s)"
                )
            elif name == "pause":
                broker = self.cluster.broker
                self._disrupt(f"broker SIGSTOPped for {cfg.pause_s:.0f} s", window)
                await _suspended(broker.pause, broker.resume, cfg.pause_s)
                self._disrupt("broker resumed (SIGCONT)", window)
                window.note = f"broker paused {cfg.pause_s:.0f} s"
            self.state.disruption = f"{name}: waiting for every partition to be active"
            window.recovered = await self.cluster.settled(120)
            window.end_ms = now_ms()
            took = (window.end_ms - window.start_ms) / 1000
            status = "recovered" if window.recovered else "NOT recovered after 120 s"
            self.say(f"disruption {name}: {window.note}; {status} in {took:.1f} s")
            self.say("assignment: " + self._assignment())
            self.state.disruption = "-"

    def _disrupt(self, text: str, window: Window) -> None:
        self.state.disruption = text
        self.say(f"disruption: {text}")
        for w in self.cluster.workers:
            if w.running() or "restart" in text:
                w.mark(f"(run event) {text}")

    # -- progress -----------------------------------------------------------------------------

    async def progress(self, monitor: Monitor) -> None:
        """Sample every second (the generator's back-pressure), print every ``progress_s``."""
        last_sent, last_t, last_said = 0, time.monotonic(), time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            stats = self.load.stats if self.load else LoadStats()
            try:
                ingested, backlog, forwarded = await asyncio.wait_for(monitor.sample(), 3.0)
                figures = (
                    f"ingested {ingested:,} records, {backlog:,} to go (moved copies included) "
                    f"| forwarded {forwarded:,}"
                )
                if self.load is not None:
                    self.load.note_ingested(ingested, backlog)
            except (TimeoutError, Exception) as exc:  # broker paused or busy: say so, go on
                ingested = backlog = forwarded = -1
                figures = f"(broker not answering: {type(exc).__name__})"
            now = time.monotonic()
            self.state.timeline.append(
                {
                    "t_s": round(now - self.started, 1),
                    "ms": now_ms(),
                    "sent": stats.sent,
                    "records": stats.records,
                    "ingested": ingested,
                    "backlog": backlog,
                    "forwarded": forwarded,
                }
            )
            if now - last_said < self.cfg.progress_s:
                continue
            rate = (stats.sent - last_sent) / (now - last_t)
            last_sent, last_t, last_said = stats.sent, now, now
            lag = self.load.ingest_lag_s(now) if self.load is not None else None
            lag_text = "" if lag is None else f", ingest lag {lag:.0f} s"
            self.say(
                f"{self.state.phase}: sent {stats.sent:,} ({rate:,.0f}/s{lag_text}; new "
                f"{stats.new:,} repl {stats.replaces:,} cancel {stats.cancels:,}) | {figures} | "
                f"workers up {len(self.cluster.live())} | disruption: {self.state.disruption}"
            )

    async def watch_counters(self) -> None:
        """Every ``progress_s``, the workers' counters (see :meth:`sample_counters`)."""
        while True:
            await self.sample_counters()
            await asyncio.sleep(self.cfg.progress_s)

    async def sample_counters(self, workers: list[Worker] | None = None) -> None:
        """The move and recurrence counters of ``workers`` (default: every live one), from
        ``GET /stats``.

        A worker's counters start at 0 with its process: the run keeps each process's last
        answer (sampled again just before a disruption stops it) and adds them up.
        """
        asked = [w for w in (self.cluster.live() if workers is None else workers) if not w.frozen]
        bodies = await asyncio.gather(
            *(asyncio.to_thread(w.get_json, "/stats", 3.0) for w in asked)
        )
        for worker, body in zip(asked, bodies, strict=True):
            counters = body.get("counters")
            if isinstance(counters, dict):
                self.worker_counters[(worker.name, worker.starts)] = {
                    **{name: counters.get(name, 0) for name in _SUMMED_COUNTERS},
                    "move_lag_max_ms": (body.get("move_lag_ms") or {}).get("max"),
                }

    def move_counters(self) -> dict[str, Any]:
        """The workers' move and recurrence counters, added up over every worker process of
        the run."""
        rows = self.worker_counters
        lags = [row["move_lag_max_ms"] for row in rows.values() if row["move_lag_max_ms"]]
        return {
            **{name: sum(row[name] for row in rows.values()) for name in _SUMMED_COUNTERS},
            "move_lag_max_ms": max(lags, default=None),
            "worker_processes": len(rows),
            "per_process": {f"{name}#{start}": row for (name, start), row in rows.items()},
        }

    # -- the run ------------------------------------------------------------------------------

    async def load_phase(self) -> LoadStats:
        cfg = self.cfg
        load = self.load = LoadGenerator(
            self.cluster.broker.bootstrap,
            self.names.ingest,
            self.names.target_topics,
            self.names.prefix,
            LoadConfig(
                rate=cfg.rate,
                duration_s=cfg.duration_s,
                max_delay_ms=int(cfg.max_delay_s * 1000),
                max_lag_s=cfg.max_lag_s,
                seed=cfg.seed,
                partitioners=cfg.partitioners,
                mixed_share=cfg.mixed_share,
                partitions=cfg.partitions,
                recurring_share=cfg.recurring_share,
            ),
            self.acks,
        )
        await load.start()
        self.forwards = Follower(self.cluster.broker.bootstrap, self.names.target_topics)
        await self.forwards.start()  # read the forwards while they are written
        self.state.phase = "load"
        self.load_t0 = time.monotonic()
        self.say(
            f"load: {cfg.rate:,.0f} commands/s for {cfg.duration_s:.0f} s, delays 0-"
            f"{cfg.max_delay_s:.0f} s; events: "
            + ", ".join(f"{n}@{f * cfg.duration_s:.0f}s" for n, f in cfg.events)
        )
        chaos = asyncio.create_task(self.disruptions())
        try:
            stats = await load.run()
            span_s = (stats.last_ms - stats.first_ms) / 1000
            self.say(
                f"load done: {stats.sent:,} commands in {span_s:.1f}"
                f" s = {stats.rate:,.0f}/s (asked {cfg.rate:,.0f}/s), {stats.errors} send errors"
            )
            remaining = self.hard_deadline - time.monotonic()
            await asyncio.wait_for(chaos, max(1.0, remaining))
        finally:
            if not chaos.done():
                chaos.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await chaos
            await load.stop()
        return stats

    async def reconcile_phase(self) -> dict[str, Any]:
        cfg, book, bootstrap = self.cfg, self.book, self.cluster.broker.bootstrap
        self.state.phase = "reconcile"

        def ingest(record: Any) -> None:
            book.add_ingest(
                record.partition,
                record.offset,
                record.timestamp,
                record.key,
                record.value,
                record.headers,
            )

        if self.load is not None and self.load.stats.off_home:
            await self._wait_moved()
        await read_to_end(bootstrap, [self.names.ingest], ingest)
        # The series nothing ended are expected to fire up to now (chaos/series.py).
        book.close_ingest(horizon_ms=now_ms())
        grace_ms = int(cfg.grace_s * 1000)
        self.say(
            f"reconcile: ingest read, {book.ingest_records:,} commands; {len(book.expected):,} "
            f"jobs and {len(book.series):,} series expected; last due in "
            f"{(book.max_due - now_ms()) / 1000:.0f} s; waiting until all are forwarded (at most "
            f"until {cfg.grace_s:.0f} s after the last due time with no progress for "
            f"{cfg.quiet_s:.0f} s)"
        )
        progress = {"missing": book.waiting(), "at": time.monotonic(), "said": 0.0}
        stop_reason = ["all expected jobs forwarded"]

        def done() -> bool:
            if not book.waiting():
                return True
            now = time.monotonic()
            if now > self.hard_deadline - FORENSICS_RESERVE_S:
                stop_reason[0] = f"hard limit of {cfg.max_total_s:.0f} s reached"
                return True
            quiet = now - float(progress["at"])
            if now_ms() > book.max_due + grace_ms and quiet > cfg.quiet_s:
                stop_reason[0] = (
                    f"{cfg.grace_s:.0f} s past the last due time and no progress for {quiet:.0f} s"
                )
                return True
            return False

        def tick() -> None:
            now = time.monotonic()
            if book.waiting() != progress["missing"]:
                progress["missing"], progress["at"] = book.waiting(), now
            if now - float(progress["said"]) >= cfg.progress_s:
                progress["said"] = now
                self.say(
                    f"reconcile: forwards read {book.forwards:,}; expected jobs not yet "
                    f"forwarded {len(book.missing):,} of {len(book.expected):,}; series not "
                    f"caught up {len(book.series_behind):,} of {len(book.series):,}; "
                    f"last due {(now_ms() - book.max_due) / 1000:+.0f} s ago"
                )

        def forward(record: Any) -> None:
            book.add_forward(
                Forward(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.timestamp,
                    record.key,
                    record.value,
                    tuple(record.headers),
                )
            )

        await self._collect_forwards(forward, done, tick)
        self.say(f"reconcile: stopped waiting: {stop_reason[0]}")
        found_again = await self._read_missing_again(forward)
        await self.sample_counters()
        dead: dict[bytes, str] = {}

        def dead_letter(record: Any) -> None:
            reason = dict(record.headers).get("delayq-error", b"").decode(errors="replace")
            dead[record.key or b""] = reason

        await read_to_end(bootstrap, [self.names.dead_letters], dead_letter)
        committed: dict[int, int] = {}
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                committed = await asyncio.wait_for(self.monitor.committed(), 10)
        # A job whose final command the workers never committed was not lost by them (yet):
        # the run ended before they read it.
        self.committed = committed
        unread = sum(1 for job_id in book.missing if not self._read(job_id))
        return {
            "stop_reason": stop_reason[0],
            "dead_letters": dead,
            "unread": unread,
            "found_on_second_read": found_again,
        }

    async def _wait_moved(self) -> None:
        """Until the workers have committed the whole ingest topic (at most ``CATCH_UP_S``).

        A command written off its job's home partition takes its place in the job's order where
        its moved copy lies in the home partition: the copies must be there before the ingest
        topic is read. A worker commits past a command only once its copy is acknowledged.
        """
        assert self.monitor is not None, "started with the load"
        cfg = self.cfg
        reserve = FORENSICS_RESERVE_S + cfg.quiet_s
        deadline = min(time.monotonic() + CATCH_UP_S, self.hard_deadline - reserve)
        behind: int | str = "?"
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                _ingested, behind, _forwarded = await asyncio.wait_for(self.monitor.sample(), 5)
            if behind == 0:
                return
            await asyncio.sleep(0.5)
        self.say(
            f"reconcile: the workers still had {behind} ingest records to commit after "
            f"{CATCH_UP_S:.0f} s; reading the ingest topic anyway (commands not moved yet count "
            "as never applied, not yet read)"
        )

    async def _read_missing_again(self, forward: Callable[[Any], None]) -> int:
        """Read the target topics once more for the jobs still missing; how many it found.

        Tells a forward the following reader never got (it is in the topic) from one that is
        not there at all. The follower reads a skipped range again only once a later record of
        the partition shows the gap, so a skip at the end of a partition shows only here. Only
        the missing jobs' records are handed on, so nothing is counted twice.
        """
        book = self.book
        if not book.missing:
            return 0
        before = len(book.missing)
        wanted = set(book.missing)

        def missing_forward(record: Any) -> None:
            if dict(record.headers).get("delayq-job-id") in wanted:
                forward(record)

        await read_to_end(self.cluster.broker.bootstrap, self.names.target_topics, missing_forward)
        found = before - len(book.missing)
        self.say(f"reconcile: a second full read of the target topics found {found} of {before}")
        return found

    async def _collect_forwards(
        self,
        handle: Callable[[Any], None],
        done: Callable[[], bool],
        tick: Callable[[], None],
    ) -> None:
        """Hand the forwards read so far (and from now on) to ``handle`` until ``done()``."""
        assert self.forwards is not None, "started by the load phase"
        try:
            while True:
                for record in self.forwards.take():
                    handle(record)
                tick()
                if done():
                    return
                await asyncio.sleep(0.2)
        finally:
            await self.forwards.stop()

    def _read(self, job_id: bytes) -> bool:
        """Whether the workers had committed the job's final command when the run stopped."""
        return self.was_committed(self.book.jobs[job_id], self.book.expected[job_id])

    def was_committed(self, job: JobLog, cmd: Cmd) -> bool:
        """Whether the workers had committed a command when the run stopped: its applied place
        in the home partition, or for a command not moved there, where it was written."""
        partition, offset = job.partition, cmd.offset
        if offset < 0 and cmd.landed is not None:
            partition, offset = cmd.landed
        return offset < self.committed.get(partition, 0)

    def never_forwarded(self, dead: dict[bytes, str]) -> list[dict[str, Any]]:
        """Up to 20 never-forwarded jobs, each with what the owning worker says about it."""
        out: list[dict[str, Any]] = []
        live = self.cluster.live()
        # Those the workers did read first: they are the ones that would be lost.
        missing = sorted(self.book.missing, key=lambda j: (not self._read(j), j))
        for job_id in missing[:20]:
            cmd = self.book.expected[job_id]
            job = self.book.jobs[job_id]
            entry: dict[str, Any] = {
                "job_id": job_id.decode(errors="replace"),
                "ingest_partition": job.partition,
                "final_schedule_offset": cmd.offset,
                "due_ms": cmd.due,
                "due_at_s": round((cmd.due - self.started_ms) / 1000, 1),
                "commands": [
                    {
                        "offset": c.offset,
                        "written_ms": c.ts,
                        "what": "cancel" if c.due < 0 else f"schedule due {c.due}",
                        **({} if c.landed is None else {"written_to": _at(*c.landed)}),
                    }
                    for c in job.cmds
                ],
                "dead_letter": dead.get(job_id),
                "read_by_workers": self._read(job_id),
                "committed_offset_of_partition": self.committed.get(job.partition),
                "forwards_seen": [
                    {"ts": ts, "due_ms": due, "schedule_index": index}
                    for ts, due, index in self.book.forward_log.get(job_id, [])[:10]
                ],
            }
            if live:
                path = "/jobs/" + urllib.parse.quote(job_id.decode(errors="replace"), safe="")
                entry["worker_says"] = live[0].get_json(path, timeout=5)
            if len(out) < 5:
                entry["worker_logs_around"] = self.log_excerpt(cmd.ts - 10_000, cmd.due + 30_000)
            out.append(entry)
        return out

    def never_applied(self) -> list[dict[str, Any]]:
        """Up to 20 moved commands without an applied copy in their job's home partition."""
        out = []
        for job_id, cmd in self.book.never_applied[:20]:
            job = self.book.jobs[job_id]
            assert cmd.landed is not None
            out.append(
                {
                    "job_id": job_id.decode(errors="replace"),
                    "what": "cancel" if cmd.due < 0 else f"schedule due {cmd.due}",
                    "written_to": _at(*cmd.landed),
                    "home_partition": job.partition,
                    "acked_ms": cmd.acked,
                    "read_by_workers": self.was_committed(job, cmd),
                    "committed_offset_of_partition": self.committed.get(cmd.landed[0]),
                }
            )
        return out

    def log_excerpt(self, lo_ms: int, hi_ms: int, limit: int = 80) -> list[str]:
        """Group, recovery and error lines of every worker log between two epoch ms."""
        lines: list[tuple[int, str]] = []
        for worker in self.cluster.workers:
            for line in worker.log_path.read_text(errors="replace").splitlines():
                if not _EXCERPT.search(line):
                    continue
                at = _log_time_ms(line)
                if at is not None and lo_ms <= at <= hi_ms:
                    lines.append((at, f"{worker.name} {line.strip()[:220]}"))
        lines.sort()
        return [text for _at, text in lines[:limit]]

    async def forensics(self, result: dict[str, Any]) -> None:
        """Explain suspicious forwards with the jobs changelog (see ``chaos/forensics.py``).

        Every forward of a schedule whose cancel or replace was acknowledged before its due
        time, and every duplicated schedule, is classified by cause; never-forwarded, early and
        mismatched samples get their job's changelog history, lost ones their ingest
        neighbours' fate.
        """
        book = self.book
        superseded = [key for key, how in book.superseded.items() if how.when == BEFORE_DUE]
        samples = [
            sample
            for name in ("never_forwarded_samples", "early_samples", "mismatched_samples")
            for sample in result[name][:10]
        ]
        neighbours = self._neighbours(result["never_forwarded_samples"][:5])
        ids = [j for j, _i in superseded] + [j for j, _d, _v in book.second]
        ids += [sample["job_id"].encode() for sample in samples]
        ids += [job_id for ns in neighbours.values() for _o, job_id, _c in ns]
        wanted = {j: book.jobs[j].partition for j in ids if j in book.jobs}
        if not wanted:
            return
        budget = self.hard_deadline - time.monotonic()
        if budget < 20:
            self.say("forensics skipped: no time left")
            return
        self.say(f"forensics: reading the jobs changelog for {len(wanted):,} jobs")
        try:
            history = await asyncio.wait_for(
                changelog_history(self.cluster.broker.bootstrap, self.names.changelog, wanted),
                budget - 10,
            )
        except TimeoutError:
            self.say("forensics: reading the changelog took too long, skipped")
            return
        for sample in samples:
            job_id = sample["job_id"].encode()
            origin = int(sample.get("due_ms") or sample.get("detail", {}).get("due", 0) or 0)
            sample["changelog (ms from due)"] = format_events(history.get(job_id, []), origin)
        for sample in result["never_forwarded_samples"][:5]:
            sample["ingest neighbours (offset: fate)"] = _fates(
                neighbours.get(sample["job_id"], []), history
            )
        result["forensics"] = {
            "superseded_acked_before_due": self._superseded_causes(superseded, history),
            "duplicated_schedules": self._duplicate_causes(history),
        }

    def _superseded_causes(
        self, superseded: list[tuple[bytes, int]], history: dict[bytes, list[dict[str, Any]]]
    ) -> dict[str, Any]:
        book = self.book
        causes: dict[str, int] = {}
        examples: dict[str, list[dict[str, Any]]] = {}
        for job_id, index in superseded:
            job = book.jobs[job_id]
            sched, nxt = job.cmds[index], job.cmds[index + 1]
            ahead = book.superseded[(job_id, index)].acked_before_due_ms
            fwd_ts = book.first[(job_id, sched.due, sched.vhash)]
            events = history.get(job_id, [])
            cause, text = superseded_cause(
                sched.due, sched.offset, nxt.offset, nxt.due < 0, fwd_ts, events
            )
            causes[cause] = causes.get(cause, 0) + 1
            if len(examples.setdefault(cause, [])) < 5:
                examples[cause].append(
                    {
                        "job_id": job_id.decode(errors="replace"),
                        "ingest_partition": job.partition,
                        "schedule": f"offset {sched.offset}, due {sched.due}",
                        "superseded_by": f"{'cancel' if nxt.due < 0 else 'replace'} at offset "
                        f"{nxt.offset}, written {sched.due - nxt.ts} ms and acknowledged "
                        f"{ahead} ms before the due time" + _moved_note(nxt, sched.due),
                        "forwarded": f"{fwd_ts - sched.due:+d} ms after the due time",
                        "explanation": text,
                        "changelog (ms from due)": format_events(events, sched.due),
                    }
                )
        return {"causes": causes, "examples": examples}

    def _duplicate_causes(self, history: dict[bytes, list[dict[str, Any]]]) -> dict[str, Any]:
        book = self.book
        ack_timeout_ms = int(self.worker_settings.ack_timeout_s * 1000)
        causes: dict[str, int] = {}
        examples: dict[str, list[dict[str, Any]]] = {}
        for (job_id, due, vhash), second_ts in book.second.items():
            job = book.jobs[job_id]
            version = next(c.offset for c in job.cmds if c.due == due and c.vhash == vhash)
            first_ts = book.first[(job_id, due, vhash)]
            events = history.get(job_id, [])
            cause = duplicate_cause(due, version, first_ts, second_ts, events, ack_timeout_ms)
            causes[cause] = causes.get(cause, 0) + 1
            if len(examples.setdefault(cause, [])) < 3:
                examples[cause].append(
                    {
                        "job_id": job_id.decode(errors="replace"),
                        "ingest_partition": job.partition,
                        "schedule_offset": version,
                        "due_ms": due,
                        "forwards (ms from due)": [
                            ts - due for ts, d, _i in book.forward_log.get(job_id, []) if d == due
                        ],
                        "changelog (ms from due)": format_events(events, due),
                    }
                )
        return {"causes": causes, "examples": examples}

    def _neighbours(
        self, samples: list[dict[str, Any]], span: int = 15
    ) -> dict[str, list[tuple[int, bytes, Cmd]]]:
        """The ingest commands within ``span`` offsets of each sample's final schedule."""
        ranges: dict[int, list[tuple[int, int, str]]] = {}
        for sample in samples:
            offset = sample["final_schedule_offset"]
            ranges.setdefault(sample["ingest_partition"], []).append(
                (offset - span, offset + span, sample["job_id"])
            )
        found: dict[str, list[tuple[int, bytes, Cmd]]] = {}
        for job_id, job in self.book.jobs.items():
            for lo, hi, name in ranges.get(job.partition, []):
                for cmd in job.cmds:
                    if lo <= cmd.offset <= hi:
                        found.setdefault(name, []).append((cmd.offset, job_id, cmd))
        for entries in found.values():
            entries.sort(key=lambda entry: entry[0])
        return found

    def log_summary(self) -> dict[str, dict[str, int]]:
        summary = {}
        for worker in self.cluster.workers:
            text = worker.log_path.read_text(errors="replace")
            summary[worker.name] = {k: len(p.findall(text)) for k, p in _LOG_PATTERNS.items()}
        return summary

    def lateness(self) -> dict[str, Any]:
        cfg = self.cfg
        spans = [
            (w.start_ms - 2_000, (w.end_ms or now_ms()) + int(cfg.settle_s * 1000))
            for w in self.state.windows
        ]
        points = self.book.lateness()
        every = sorted(late for _due, late in points)
        outside = sorted(
            late for due, late in points if not any(lo <= due <= hi for lo, hi in spans)
        )
        per_window = []
        for window, (lo, hi) in zip(self.state.windows, spans, strict=True):
            inside = [late for due, late in points if lo <= due <= hi]
            per_window.append(
                {
                    "event": window.name,
                    "note": window.note,
                    "start_s": round((window.start_ms - self.started_ms) / 1000, 1),
                    "recovered_after_s": round((window.end_ms - window.start_ms) / 1000, 1),
                    "recovered": window.recovered,
                    "jobs_due_in_window": len(inside),
                    "max_lateness_ms": max(inside, default=None),
                }
            )
        return {
            "p50_ms": quantile(every, 0.50),
            "p99_ms": quantile(every, 0.99),
            "max_ms": every[-1] if every else None,
            "outside_windows_jobs": len(outside),
            "outside_windows_p50_ms": quantile(outside, 0.50),
            "outside_windows_p99_ms": quantile(outside, 0.99),
            "outside_windows_max_ms": outside[-1] if outside else None,
            "windows": per_window,
        }

    def ingest_lag(self) -> dict[str, Any]:
        """Worst distance of the workers' committed ingest offsets behind what was sent."""
        points = [p for p in self.state.timeline if p["ingested"] >= 0]
        worst_records, worst_s = 0, 0.0
        for point in points:
            # Records, not commands: the workers commit moved copies too.
            behind = point["backlog"]
            worst_records = max(worst_records, behind)
            # When had the generator sent what the workers had committed by now?
            done = point["records"] - behind
            reached = next((q for q in points if q["records"] >= done), None)
            if reached is not None:
                worst_s = max(worst_s, (point["ms"] - reached["ms"]) / 1000)
        return {"max_records_behind": worst_records, "max_seconds_behind_approx": worst_s}


async def _suspended(stop: Callable[[], None], resume: Callable[[], None], seconds: float) -> None:
    """``stop()``, then ``resume()`` after ``seconds``, whatever happens (Ctrl-C included)."""
    stop()
    try:
        await asyncio.sleep(seconds)
    finally:
        resume()


def _at(partition: int, offset: int) -> str:
    return f"{partition}@{offset}"


def _moved_note(cmd: Cmd, due: int) -> str:
    """For a moved command: where it was written, and when its copy was acknowledged at home."""
    if cmd.landed is None:
        return ""
    at_home = "?" if cmd.home_acked is None else f"{due - cmd.home_acked}"
    return f" (written to {_at(*cmd.landed)}; its moved copy acknowledged {at_home} ms before it)"


def _fates(
    neighbours: list[tuple[int, bytes, Cmd]], history: dict[bytes, list[dict[str, Any]]]
) -> list[str]:
    """Whether each neighbouring ingest command reached the jobs changelog, and when."""
    lines = []
    for offset, job_id, cmd in neighbours:
        if cmd.due < 0:
            lines.append(f"{offset}: cancel (no changelog put expected)")
            continue
        puts = [
            e for e in history.get(job_id, []) if e["op"] == "put" and e.get("version") == offset
        ]
        applied = (
            f"applied {puts[0]['ts'] - cmd.ts:+d} ms after it was written ({puts[0]['changelog']})"
            if puts
            else "NEVER APPLIED (not in the changelog)"
        )
        lines.append(f"{offset}: schedule of {job_id.decode(errors='replace')}, {applied}")
    return lines


def figures(run: Run, extra: dict[str, Any]) -> dict[str, Any]:
    """The book's figures, and what the run learned besides (dead letters, the reader's skips)."""
    book = run.book
    dead: dict[bytes, str] = extra["dead_letters"]
    return {
        **book_figures(book, run.move_counters()["occurrences_skipped"]),
        "forward_ranges_read_again": run.forwards.skipped_ranges if run.forwards else 0,
        "missing_found_on_second_read": extra.get("found_on_second_read", 0),
        "forward_records_read_again": run.forwards.read_again if run.forwards else 0,
        "never_forwarded_dead_lettered": sum(1 for j in book.missing if j in dead),
        "never_forwarded_not_yet_read": extra["unread"],
        "moved_never_applied_not_yet_read": sum(
            not run.was_committed(book.jobs[job_id], cmd) for job_id, cmd in book.never_applied
        ),
        "dead_letters": len(dead),
        "stop_reason": extra["stop_reason"],
    }


async def run(cfg: ChaosConfig, out: Printer = print) -> dict[str, Any]:
    """The whole chaos run; the result dict (also written as JSON by the caller)."""
    cfg.check()
    r = Run(cfg, out)
    monitor: Monitor | None = None
    progress: asyncio.Task[None] | None = None
    counters: asyncio.Task[None] | None = None
    try:
        await r.setup()
        monitor = r.monitor = Monitor(r.cluster.broker.bootstrap, r.names)
        await monitor.start()
        progress = asyncio.create_task(r.progress(monitor))
        counters = asyncio.create_task(r.watch_counters())
        stats = await r.load_phase()
        extra = await r.reconcile_phase()
        result: dict[str, Any] = {
            "command": cfg.command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(r.started_ms / 1000)),
            "run_dir": str(r.run_dir),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "worker_settings": {
                "ack_timeout_s": r.worker_settings.ack_timeout_s,
                "session_timeout_s": r.session_timeout_s,
                "freeze_s": r.freeze_s,
            },
            "load": {
                "asked_rate": cfg.rate,
                "achieved_rate": round(stats.rate, 1),
                "sent": stats.sent,
                "new": stats.new,
                "replaces": stats.replaces,
                "cancels": stats.cancels,
                "send_errors": stats.errors,
                "partitioners": list(cfg.partitioners),
                "mixed_share": cfg.mixed_share,
                "by_partitioner": stats.by_partitioner,
                "off_home": stats.off_home,
                "mixed_jobs": stats.mixed_jobs,
                "mixed_commands": stats.mixed_commands,
                "recurring_share": cfg.recurring_share,
                "series": stats.series,
                "series_until": stats.series_until,
                "series_cancels": stats.series_cancels,
                "series_replaces": stats.series_replaces,
                "ack_times_noted": len(r.acks),
                "send_error_samples": stats.error_samples,
                "throttled_s": round(stats.throttled_s, 1),
                "max_ingest_lag_s": round(stats.max_ingest_lag_s, 1),
            },
            "figures": figures(r, extra),
            "lateness": r.lateness(),
            "ingest_lag": r.ingest_lag(),
            "worker_counters": r.move_counters(),
            "committed_ingest_offsets_at_end": r.committed,
            "disruptions": [asdict(w) for w in r.state.windows],
            "never_forwarded_samples": r.never_forwarded(extra["dead_letters"]),
            "early_samples": [asdict(a) for a in r.book.early[:20]],
            "mismatched_samples": [asdict(a) for a in r.book.mismatched[:20]],
            "foreign_duplicate_samples": [asdict(a) for a in r.book.foreign_duplicates[:20]],
            "acked_before_due_samples": [asdict(a) for a in r.book.superseded_samples[:20]],
            "moved_never_applied_samples": r.never_applied(),
            "occurrence_samples": [asdict(a) for a in r.book.occurrence_samples[:20]],
            "series_never_forwarded_samples": r.book.series_tally()[1],
            "worker_logs": r.log_summary(),
            "load_average": {"start": r.loadavg_start, "end": list(os.getloadavg())},
            "timeline": r.state.timeline,
        }
        await r.forensics(result)
        failed = failures(result["figures"])
        result["ok"] = not failed
        result["failed"] = failed
        result["took_s"] = round(time.monotonic() - r.started, 1)
        body = json.dumps(result, indent=1, default=str)
        (r.run_dir / "result.json").write_text(body)
        (r.run_dir / "table.txt").write_text(table(result) + "\n")
        if cfg.write_latest:
            (cfg.out_dir / "latest.json").write_text(body)
        return result
    finally:
        if r.forwards is not None:
            with contextlib.suppress(Exception):
                await r.forwards.stop()
        for task in (progress, counters):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if monitor is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(monitor.stop(), 10)
        r.say("stopping workers and broker")
        await asyncio.to_thread(r.cluster.close)
        r._progress_log.close()
