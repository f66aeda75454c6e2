"""The load generator: schedules, replaces and cancels at a steady rate on the ingest topic.

One aiokafka producer (acks=all, batched) that writes each command to the partition a real
client's partitioner would pick (:data:`PARTITIONERS`): murmur2 (aiokafka's, Java's: the job's
home partition), FNV-1a (sarama's default) or CRC-32 (librdkafka's ``consistent_random``).
Each job id picks one of the configured partitioners by a stable hash of the id
(:func:`routes`), and every command for the job goes through it; a share of the jobs
(``mixed_share``) sends its replaces and cancels through another one than its first schedule,
as when two services with different clients share a job. Commands written off their job's
home partition are moved there by the workers (app/moving.py).

Every 10 ms slice it sends as many commands as the rate asks for by then, so a slow slice is
caught up in the next ones; the achieved rate is measured, not assumed.

A command is one of:

- a new job: key = a fresh job id, due in 0..max delay (a few at 0 ms), given as
  ``delayq-due-ms`` (absolute) or ``delayq-delay-ms`` (from the record timestamp), to one of
  the target topics; some carry ``delayq-key`` and a header of their own;
- a replace: a new schedule for a job this generator believes still pending (its due time not
  yet reached), with the next revision of its value and, mostly, a new due time;
- a cancel: key = such a job id, null value, no headers.

A share of the new jobs (``recurring_share``) are recurring instead: ``delayq-every-ms`` of
1-5 s (:data:`EVERY_MS`), the first occurrence in the same delay range, some with
``delayq-until-ms`` a few occurrences on. Such a *series* is pending until cancelled (or its
``until`` passed): the cancels and replaces pick one now and then (a replace starts a new
series, with the next revision of its value and, mostly, another interval).

Values are ``<job id>|<revision>|`` padded to 100 bytes, so a forwarded value names its job.
What was sent is read back from the ingest topic by the reconciler: the generator's own
bookkeeping only picks the jobs to replace and cancel, and notes when the broker acknowledged
each command (:class:`chaos.acks.AckTimes`), which the ingest topic does not tell.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from app.moving import crc32_partition, fnv1a_partition, home_partition
from app.times import now_ms
from chaos.acks import AckTimes

__all__ = ["PARTITIONERS", "LoadConfig", "LoadGenerator", "LoadStats", "job_value", "routes"]

#: The producer partitioners the load can use: (job id, partition count) -> partition.
PARTITIONERS: Mapping[str, Callable[[bytes, int], int]] = {
    "murmur2": home_partition,  # aiokafka, Java, kafkajs 2, librdkafka murmur2_random
    "fnv1a": fnv1a_partition,  # sarama's default
    "crc32": crc32_partition,  # librdkafka's default (consistent_random)
}

SLICE_S = 0.010
VALUE_BYTES = 100
#: Jobs remembered as candidates for replace and cancel.
_RECENT = 50_000
#: A series' interval is drawn between these (ms): delayq's minimum, and a few occurrences in a
#: short run.
EVERY_MS = (1_000, 5_000)
#: Share of the series that end by ``delayq-until-ms``, after at most this many occurrences.
UNTIL_SHARE = 0.3
UNTIL_OCCURRENCES = 5
#: A cancel or replace picks a series (rather than a one-shot job) this many times as often as
#: a new job is one: about a quarter of the series get cancelled, two fifths replaced.
SERIES_FOLLOW_UP = 2.0

Command = tuple[bytes, bytes | None, list[tuple[str, bytes]], bool]


def job_value(job_id: bytes, revision: int) -> bytes:
    return (b"%s|%d|" % (job_id, revision)).ljust(VALUE_BYTES, b".")


def routes(job_id: bytes, names: Sequence[str], mixed_share: float) -> tuple[str, str]:
    """The partitioners of a job's commands: (its first schedule's, its replaces' and cancels').

    Picked by a hash of the id (not Python's ``hash``, which is salted per process), so a run
    can be repeated and every command of a job takes the same route: the same partitioner
    twice, but for a ``mixed_share`` of the jobs, whose follow-ups use another one.
    """
    digest = int.from_bytes(hashlib.blake2b(job_id, digest_size=8).digest(), "big")
    first = digest % len(names)
    mixed = len(names) > 1 and (digest >> 32) % 10_000 < mixed_share * 10_000
    if not mixed:
        return names[first], names[first]
    other = (first + 1 + (digest >> 16) % (len(names) - 1)) % len(names)
    return names[first], names[other]


@dataclass(frozen=True)
class LoadConfig:
    rate: float
    duration_s: float
    max_delay_ms: int
    replace_share: float = 0.15
    cancel_share: float = 0.10
    #: Share of schedules giving ``delayq-delay-ms`` instead of ``delayq-due-ms``.
    relative_share: float = 0.3
    #: Pause sending while the workers' backlog is more than this many seconds of their
    #: recent ingest pace (0: never pause, send at ``rate`` whatever happens).
    max_lag_s: float = 0.0
    seed: int = 1
    #: Partitioners the commands go through (names in :data:`PARTITIONERS`), and the share of
    #: jobs whose replaces and cancels go through another one than their first schedule.
    partitioners: tuple[str, ...] = ("murmur2",)
    mixed_share: float = 0.0
    #: Ingest partitions (the partitioners need the count).
    partitions: int = 1
    #: Share of new jobs that are recurring (``delayq-every-ms``).
    recurring_share: float = 0.0


@dataclass
class LoadStats:
    sent: int = 0
    new: int = 0
    replaces: int = 0
    cancels: int = 0
    acked: int = 0
    errors: int = 0
    first_ms: int = 0
    last_ms: int = 0
    #: Seconds spent not sending because the workers' ingest lag exceeded ``max_lag_s``.
    throttled_s: float = 0.0
    #: Worst ingest lag seen: how long ago the command the workers had committed was sent.
    max_ingest_lag_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    #: Commands sent through each partitioner.
    by_partitioner: dict[str, int] = field(default_factory=dict)
    #: Commands written off their job's home partition: the workers move each there.
    off_home: int = 0
    #: New jobs whose replaces and cancels go through another partitioner than their first
    #: schedule, and those replaces and cancels.
    mixed_jobs: int = 0
    mixed_commands: int = 0
    #: New jobs that are series, those of them with ``delayq-until-ms``, and the cancels and
    #: replaces that picked a series (counted in ``new``, ``cancels`` and ``replaces`` too).
    series: int = 0
    series_until: int = 0
    series_cancels: int = 0
    series_replaces: int = 0

    @property
    def records(self) -> int:
        """Records the commands sent make on the ingest topic: two for a moved one."""
        return self.sent + self.off_home

    @property
    def rate(self) -> float:
        span = (self.last_ms - self.first_ms) / 1000
        return self.sent / span if span > 0 else float(self.sent)


class _Pending:
    """Jobs believed pending: a ring of [job_id, due_ms, revision, target, fkey, alive]."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.items: deque[list[object]] = deque(maxlen=_RECENT)

    def add(self, entry: list[object]) -> None:
        self.items.append(entry)

    def pick(self, now: int) -> list[object] | None:
        """A job not cancelled and not yet due (a few tries, then None)."""
        if not self.items:
            return None
        for _ in range(4):
            entry = self.items[self.rng.randrange(len(self.items))]
            due = entry[1]
            assert isinstance(due, int)
            if entry[5] and due > now:
                return entry
        return None


@dataclass
class _Series:
    """A series the generator started, as it last scheduled it."""

    job_id: bytes
    target: str
    fkey: bytes | None
    every_ms: int = 0
    until_ms: int | None = None
    revision: int = 0
    cancelled: bool = False

    def pending(self, now: int) -> bool:
        return not self.cancelled and (self.until_ms is None or self.until_ms > now)


class _SeriesPool:
    """Series believed pending, for the cancels and replaces to pick from."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.items: list[_Series] = []

    def add(self, series: _Series) -> None:
        self.items.append(series)

    def pick(self, now: int) -> _Series | None:
        """A pending series (a few tries, then None); those found over are dropped."""
        for _ in range(4):
            if not self.items:
                return None
            at = self.rng.randrange(len(self.items))
            series = self.items[at]
            if series.pending(now):
                return series
            self.items[at] = self.items[-1]
            self.items.pop()
        return None


class LoadGenerator:
    """Sends the command mix to ``ingest`` for ``duration_s`` at ``rate`` commands/s."""

    def __init__(
        self,
        bootstrap: str,
        ingest: str,
        targets: list[str],
        prefix: str,
        config: LoadConfig,
        acks: AckTimes | None = None,
    ) -> None:
        self.ingest = ingest
        self.targets = targets
        self.prefix = prefix
        self.config = config
        self.stats = LoadStats()
        self.rng = random.Random(config.seed)
        self.pending = _Pending(self.rng)
        self.series = _SeriesPool(self.rng)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            max_batch_size=256 * 1024,
            request_timeout_ms=120_000,
        )
        self._acks: deque[asyncio.Future[Any]] = deque()
        #: When the broker acknowledged each command sent, by its (partition, offset).
        self.acked = AckTimes() if acks is None else acks
        #: Of the records the generator's commands make on the ingest topic
        #: (:attr:`LoadStats.records`), those the workers have committed (None: not known yet).
        self.ingested: int | None = None
        #: Records on the ingest topic the workers have not committed (None: not known yet).
        self.backlog: int | None = None
        #: (monotonic time, commands sent by then), one per slice.
        self._checkpoints: deque[tuple[float, int]] = deque()
        #: (monotonic time, records committed by the workers by then), the last ~10 s.
        self._ingest_marks: deque[tuple[float, int]] = deque()

    def note_ingested(self, count: int, backlog: int) -> None:
        """The workers' committed ingest position (the caller samples it about every second):
        ``count`` records committed and ``backlog`` not yet, moved copies included (a command
        moved again after a crash makes one more)."""
        now = time.monotonic()
        self.backlog = backlog
        self.ingested = max(0, self.stats.records - backlog)
        self._ingest_marks.append((now, count))
        while len(self._ingest_marks) > 2 and now - self._ingest_marks[0][0] > 10:
            self._ingest_marks.popleft()

    def ingest_rate(self) -> float | None:
        """Records/s the workers committed over the last ~10 s (None before 3 s of samples)."""
        marks = self._ingest_marks
        if len(marks) < 2 or marks[-1][0] - marks[0][0] < 3:
            return None
        return (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])

    def _throttled(self) -> bool:
        """Whether the backlog would take the workers more than ``max_lag_s`` to read."""
        if not self.config.max_lag_s or self.backlog is None:
            return False
        rate = self.ingest_rate()
        pace = self.config.rate if rate is None else max(rate, 50.0)
        return self.backlog > self.config.max_lag_s * pace

    def ingest_lag_s(self, now_s: float) -> float | None:
        """How long ago the generator sent the last command the workers have committed."""
        ingested, marks = self.ingested, self._checkpoints
        if ingested is None or not marks:
            return None
        while len(marks) > 1 and marks[0][1] < ingested:
            marks.popleft()
        if marks[0][1] < ingested or ingested >= self.stats.records:
            return 0.0
        return now_s - marks[0][0]

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    def _delay_ms(self) -> int:
        roll = self.rng.random()
        top = self.config.max_delay_ms
        if roll < 0.05:
            return 0
        if roll < 0.50:
            return self.rng.randint(0, min(5_000, top))
        return self.rng.randint(0, top)

    def _schedule_headers(
        self, target: str, fkey: bytes | None, now: int, delay: int
    ) -> list[tuple[str, bytes]]:
        headers: list[tuple[str, bytes]] = []
        if self.rng.random() < 0.3:
            headers.append(("chaos-trace", b"t-%d" % self.rng.randrange(1 << 30)))
        headers.append(("delayq-target", target.encode()))
        if self.rng.random() < self.config.relative_share:
            headers.append(("delayq-delay-ms", str(delay).encode()))
        else:
            headers.append(("delayq-due-ms", str(now + delay).encode()))
        if fkey is not None:
            headers.append(("delayq-key", fkey))
        return headers

    def _partition(self, job_id: bytes, new: bool) -> int:
        """The partition a command goes to: its job's route (:func:`routes`); counted."""
        cfg, stats = self.config, self.stats
        first, follow_up = routes(job_id, cfg.partitioners, cfg.mixed_share)
        if new and first != follow_up:
            stats.mixed_jobs += 1
        name = first if new else follow_up
        stats.mixed_commands += name != first
        stats.by_partitioner[name] = stats.by_partitioner.get(name, 0) + 1
        partition = PARTITIONERS[name](job_id, cfg.partitions)
        stats.off_home += partition != home_partition(job_id, cfg.partitions)
        return partition

    def _next(self, now: int) -> Command:
        """The next command: (key, value, headers, whether it is a new job)."""
        roll = self.rng.random()
        cfg = self.config
        if roll < cfg.replace_share + cfg.cancel_share and self._picks_series():
            series = self.series.pick(now)
            if series is not None and roll < cfg.cancel_share:
                return self._cancel_series(series)
            if series is not None:
                return self._replace_series(series, now)
        entry = None
        if roll < cfg.replace_share + cfg.cancel_share:
            entry = self.pending.pick(now)
        if entry is not None and roll < cfg.cancel_share:
            entry[5] = False
            self.stats.cancels += 1
            job_id = entry[0]
            assert isinstance(job_id, bytes)
            return job_id, None, [], False
        if entry is not None:  # replace: next revision, mostly a new due time
            revision = entry[2]
            assert isinstance(revision, int)
            entry[2] = revision + 1
            due = entry[1]
            assert isinstance(due, int)
            delay = max(0, due - now) if self.rng.random() < 0.3 else self._delay_ms()
            entry[1] = now + delay
            self.stats.replaces += 1
        elif cfg.recurring_share and self.rng.random() < cfg.recurring_share:
            return self._new_series(now)
        else:
            new_id, new_target, new_fkey = self._new_job()
            delay = self._delay_ms()
            entry = [new_id, now + delay, 0, new_target, new_fkey, True]
            self.pending.add(entry)
        job_id, revision, target, fkey = entry[0], entry[2], entry[3], entry[4]
        assert isinstance(job_id, bytes) and isinstance(revision, int) and isinstance(target, str)
        assert fkey is None or isinstance(fkey, bytes)
        value = job_value(job_id, revision)
        headers = self._schedule_headers(target, fkey, now, delay)
        return job_id, value, headers, revision == 0  # revision 0: a new job

    def _new_job(self) -> tuple[bytes, str, bytes | None]:
        """A fresh job id, its target, its forward key (None: the job id); counted as new."""
        job_id = b"%s-%08d" % (self.prefix.encode(), self.stats.new)
        target = self.targets[self.stats.new % len(self.targets)]
        fkey = b"k-" + job_id if self.rng.random() < 0.2 else None
        self.stats.new += 1
        return job_id, target, fkey

    # -- series -------------------------------------------------------------------------------

    def _picks_series(self) -> bool:
        """Whether this cancel or replace goes to a series (see :data:`SERIES_FOLLOW_UP`)."""
        share = self.config.recurring_share
        return bool(share) and self.rng.random() < share * SERIES_FOLLOW_UP

    def _new_series(self, now: int) -> Command:
        job_id, target, fkey = self._new_job()
        series = _Series(job_id, target, fkey)
        self.series.add(series)
        self.stats.series += 1
        return job_id, job_value(job_id, 0), self._series_headers(series, now), True

    def _replace_series(self, series: _Series, now: int) -> Command:
        """A new series under the same id: next revision, mostly another interval."""
        series.revision += 1
        self.stats.replaces += 1
        self.stats.series_replaces += 1
        headers = self._series_headers(series, now, keep_every=self.rng.random() < 0.3)
        return series.job_id, job_value(series.job_id, series.revision), headers, False

    def _cancel_series(self, series: _Series) -> Command:
        series.cancelled = True
        self.stats.cancels += 1
        self.stats.series_cancels += 1
        return series.job_id, None, [], False

    def _series_headers(
        self, series: _Series, now: int, keep_every: bool = False
    ) -> list[tuple[str, bytes]]:
        """A schedule of ``series``: its first occurrence in the usual delay range, its interval
        (drawn again unless ``keep_every``), for some an end a few occurrences on."""
        if not keep_every:
            series.every_ms = self.rng.randint(*EVERY_MS)
        delay = self._delay_ms()
        headers = self._schedule_headers(series.target, series.fkey, now, delay)
        headers.append(("delayq-every-ms", str(series.every_ms).encode()))
        series.until_ms = None
        if self.rng.random() < UNTIL_SHARE:
            occurrences = self.rng.randint(1, UNTIL_OCCURRENCES - 1)
            series.until_ms = now + delay + occurrences * series.every_ms
            if self.rng.random() < 0.5:  # half of them end between two occurrences
                series.until_ms += self.rng.randrange(series.every_ms)
            headers.append(("delayq-until-ms", str(series.until_ms).encode()))
            self.stats.series_until += series.revision == 0
        return headers

    async def run(self) -> LoadStats:
        """Send for ``duration_s`` seconds; return once every command is acknowledged.

        Credit accrues at ``rate`` (at most one second of it: a slow slice is caught up, a
        throttled one is not). With ``max_lag_s``, sending pauses while the commands not yet
        committed by the workers (see :meth:`note_ingested`) would take them longer than that to
        read at their recent pace: the load then follows what the workers keep up with.
        """
        cfg = self.config
        stats = self.stats
        start = last = time.monotonic()
        end = start + cfg.duration_s
        credit = 0.0
        while (now_s := time.monotonic()) < end:
            credit = min(credit + (now_s - last) * cfg.rate, max(1.0, cfg.rate))
            slice_s = now_s - last
            last = now_s
            lag = self.ingest_lag_s(now_s)
            if lag is not None:
                stats.max_ingest_lag_s = max(stats.max_ingest_lag_s, lag)
            if self._throttled():
                stats.throttled_s += slice_s
                credit = 0.0
            while credit >= 1:
                credit -= 1
                now = now_ms()
                key, value, headers, new = self._next(now)
                fut = await self.producer.send(
                    self.ingest,
                    value,
                    key=key,
                    headers=headers,
                    partition=self._partition(key, new),
                )
                # On resolution, not when reaped: _reap runs once per slice, at best.
                fut.add_done_callback(self._note_ack)
                self._acks.append(fut)
                stats.sent += 1
                stats.first_ms = stats.first_ms or now
                stats.last_ms = now
            self._checkpoints.append((now_s, stats.records))
            self._reap()
            await asyncio.sleep(SLICE_S)
        await self.producer.flush()
        if self._acks:
            await asyncio.gather(*self._acks, return_exceptions=True)
        self._reap()
        return stats

    def _note_ack(self, fut: asyncio.Future[Any]) -> None:
        """The broker's acknowledgement: when it came (one loop turn late at most)."""
        if not fut.cancelled() and fut.exception() is None:
            meta = fut.result()
            self.acked.note(meta.partition, meta.offset, now_ms())

    def _reap(self) -> None:
        while self._acks and self._acks[0].done():
            fut = self._acks.popleft()
            if fut.cancelled() or fut.exception() is not None:
                self.stats.errors += 1
                if len(self.stats.error_samples) < 5:
                    self.stats.error_samples.append(repr(fut.exception()))
            else:
                self.stats.acked += 1
