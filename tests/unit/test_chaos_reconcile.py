"""The chaos run's reconciler, on records made up here (no broker).

A clean chaos result means something only if the reconciler notices what it must: a lost, an
early, a foreign forward, and a cancel or replace that Kafka acknowledged before the due time
yet lost to the forward (issue 17), also when it was written off its job's home partition and
moved there, and a moved command the home never applied; for recurring jobs, an occurrence
early, missing beyond what the workers counted as skipped, or forwarded though due after the
cancel or replace that ended its series was acknowledged. Also the labels the forensics give
duplicates, the settings the run reads for its workers, the freeze of a worker, and the routes
the load's commands take through the producers' partitioners.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.moving import home_partition
from app.names import HEADER_MOVED_FROM
from app.times import now_ms
from chaos.acks import AckTimes
from chaos.cluster import Cluster, Names
from chaos.figures import (
    MOVED_NEVER_APPLIED,
    OCCURRENCES_AFTER_END,
    OCCURRENCES_EARLY,
    OCCURRENCES_MISSING,
    SUPERSEDED_ACKED_BEFORE_DUE,
    book_figures,
    failures,
)
from chaos.forensics import duplicate_cause
from chaos.load import EVERY_MS, PARTITIONERS, LoadConfig, LoadGenerator, routes
from chaos.reconcile import BEFORE_DUE, RACE, Book, Forward
from tests.support import wait_for

T = 1_000_000  # a made-up epoch ms
DUE = T + 9_000


Where = tuple[int, int]  # (partition, offset)


def _moved(source: Where | None) -> list[tuple[str, bytes]]:
    """The header of a command moved from ``source`` (none if it was not moved)."""
    return [] if source is None else [(HEADER_MOVED_FROM, b"%d:%d" % source)]


def _schedule(
    book: Book,
    offset: int,
    job: bytes,
    due: int,
    value: bytes,
    ts: int,
    partition: int = 0,
    moved_from: Where | None = None,
) -> None:
    headers = [("delayq-target", b"out"), ("delayq-due-ms", str(due).encode())]
    book.add_ingest(partition, offset, ts, job, value, headers + _moved(moved_from))


def _cancel(
    book: Book,
    offset: int,
    job: bytes,
    ts: int,
    partition: int = 0,
    moved_from: Where | None = None,
) -> None:
    book.add_ingest(partition, offset, ts, job, None, _moved(moved_from))


def _forward(job: bytes, due: int, value: bytes, ts: int, offset: int = 0) -> Forward:
    headers = (("delayq-job-id", job), ("delayq-due-ms", str(due).encode()))
    return Forward("out", 0, offset, ts, job, value, headers)


def _cancelled_yet_forwarded(acked_ms: int | None) -> Book:
    """A job scheduled at ``DUE``, cancelled (acknowledged at ``acked_ms``), forwarded at due."""
    acks = AckTimes()
    if acked_ms is not None:
        acks.note(0, 1, acked_ms)
    book = Book(acks)
    _schedule(book, 0, b"job", DUE, b"job|0", T)
    _cancel(book, 1, b"job", T + 10)  # written 9 s before due, whenever it was acknowledged
    book.close_ingest()
    book.add_forward(_forward(b"job", DUE, b"job|0", DUE + 1))
    return book


def test_the_reconciler_notices_lost_early_foreign_and_superseded_forwards() -> None:
    acks = AckTimes()
    acks.note(0, 4, T + 20)  # the cancel: acknowledged 8,980 ms before its due time
    acks.note(0, 6, T + 9_100)  # the replace: acknowledged 100 ms after the due time
    book = Book(acks)
    _schedule(book, 0, b"ok", T + 100, b"ok|0", T)
    _schedule(book, 1, b"lost", T + 100, b"lost|0", T)
    _schedule(book, 2, b"early", T + 5_000, b"early|0", T)
    _schedule(book, 3, b"cancelled", T + 9_000, b"cancelled|0", T)
    _cancel(book, 4, b"cancelled", T + 10)
    _schedule(book, 5, b"replaced", T + 9_000, b"replaced|0", T)
    _schedule(book, 6, b"replaced", T + 9_500, b"replaced|1", T + 8_500)
    book.add_ingest(0, 7, T, b"bad", b"no target", [])
    book.close_ingest()
    assert set(book.expected) == {b"ok", b"lost", b"early", b"replaced"}

    book.add_forward(_forward(b"ok", T + 100, b"ok|0", T + 150))
    book.add_forward(_forward(b"ok", T + 100, b"ok|0", T + 30_150))  # a duplicate
    book.add_forward(_forward(b"early", T + 5_000, b"early|0", T + 4_999))
    book.add_forward(_forward(b"cancelled", T + 9_000, b"cancelled|0", T + 9_001))
    book.add_forward(_forward(b"replaced", T + 9_000, b"replaced|0", T + 9_002))
    book.add_forward(_forward(b"replaced", T + 9_500, b"replaced|1", T + 9_600))
    book.add_forward(_forward(b"ok", T + 100, b"lost|0", T + 200))  # another job's value
    book.add_forward(_forward(b"lost", T + 100, b"ok|0", T + 200))  # ok's forward, other id
    book.add_forward(_forward(b"ghost", T, b"ghost", T + 1))  # never scheduled

    assert book.missing == {b"lost"}
    assert book.early_count == 1
    assert book.duplicates == 1
    assert book.foreign_count == 1
    assert book.mismatched_count == 3  # the two foreign values and the ghost
    assert book.superseded_counts() == {("cancel", BEFORE_DUE): 1, ("replace", RACE): 1}
    assert book.bad_ingest == 1
    assert book.cancelled_jobs() == (1, 1)
    assert sorted(late for _due, late in book.lateness()) == [-1, 50, 100]
    assert set(failures(book_figures(book))) == {
        "never_forwarded",
        "forwarded_early",
        "mismatched_forwards",
        "foreign_duplicates",
        SUPERSEDED_ACKED_BEFORE_DUE,
    }


def test_a_cancel_acknowledged_before_due_and_still_forwarded_fails_the_run() -> None:
    book = _cancelled_yet_forwarded(acked_ms=DUE - 1)

    figures = book_figures(book)
    assert figures[SUPERSEDED_ACKED_BEFORE_DUE] == 1
    assert figures["cancelled_acked_before_due_still_forwarded"] == 1
    assert figures["cancel_races_forwarded"] == figures["races_ack_unknown"] == 0
    assert failures(figures) == [SUPERSEDED_ACKED_BEFORE_DUE]
    [sample] = book.superseded_samples
    assert sample.detail["cancel_acked_before_due_ms"] == 1


def test_a_replace_acknowledged_before_due_whose_old_value_is_forwarded_fails_the_run() -> None:
    acks = AckTimes()
    acks.note(0, 1, DUE - 5_000)
    book = Book(acks)
    _schedule(book, 0, b"job", DUE, b"job|0", T)
    _schedule(book, 1, b"job", DUE + 60_000, b"job|1", T + 10)
    book.close_ingest()
    book.add_forward(_forward(b"job", DUE, b"job|0", DUE))  # the outdated value
    book.add_forward(_forward(b"job", DUE + 60_000, b"job|1", DUE + 60_000))

    figures = book_figures(book)
    assert figures["replaced_acked_before_due_outdated_forwarded"] == 1
    assert failures(figures) == [SUPERSEDED_ACKED_BEFORE_DUE]


@pytest.mark.parametrize("acked_ms", [DUE, DUE + 250], ids=["at due", "after due"])
def test_a_cancel_acknowledged_at_or_after_due_is_a_race_not_a_failure(acked_ms: int) -> None:
    figures = book_figures(_cancelled_yet_forwarded(acked_ms))

    assert figures[SUPERSEDED_ACKED_BEFORE_DUE] == 0
    assert figures["cancel_races_forwarded"] == 1
    assert figures["races_ack_unknown"] == 0
    assert failures(figures) == []


def test_a_cancel_whose_acknowledgement_is_unknown_is_a_race_counted_apart() -> None:
    figures = book_figures(_cancelled_yet_forwarded(acked_ms=None))

    assert figures[SUPERSEDED_ACKED_BEFORE_DUE] == 0
    assert figures["cancel_races_forwarded"] == 1
    assert figures["races_ack_unknown"] == 1
    assert failures(figures) == []


async def test_the_load_generator_notes_when_the_broker_acknowledged_each_command() -> None:
    acks = AckTimes()
    load = LoadGenerator("127.0.0.1:1", "ingest", ["out"], "p", LoadConfig(1, 1, 1), acks)
    acked: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    for fut in (acked, failed):
        fut.add_done_callback(load._note_ack)
    before = now_ms()

    acked.set_result(SimpleNamespace(partition=3, offset=41))
    failed.set_exception(TimeoutError())
    await asyncio.sleep(0)  # done callbacks run on the next loop turn

    assert before <= (acks.get(3, 41) or 0) <= now_ms()
    assert acks.get(3, 42) is None and acks.get(0, 0) is None
    assert len(acks) == 1


def test_a_duplicate_is_an_ack_timeout_only_after_the_workers_ack_timeout() -> None:
    due, version, first = T, 7, T + 10
    timeout_ms = 300_000

    def cause(gap_ms: int) -> str:
        return duplicate_cause(due, version, first, first + gap_ms, [], timeout_ms)

    assert cause(40_000) == "re-forward before ack timeout"
    assert cause(timeout_ms - 1_001) == "re-forward before ack timeout"
    assert cause(timeout_ms - 1_000) == "ack timeout"


def test_the_run_reads_the_settings_its_workers_inherit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DELAYQ_ACK_TIMEOUT_S", "DELAYQ_SESSION_TIMEOUT_S", "DELAYQ_STANDBY_REPLICAS"):
        monkeypatch.delenv(name, raising=False)
    names = Names("chaosx", 4, (("out", 1),))
    cluster = Cluster(names, tmp_path, tmp_path / "data", DELAYQ_STANDBY_REPLICAS="0")
    assert cluster.worker_settings().ack_timeout_s == 300.0  # the worker's default
    assert cluster.worker_session_timeout_s() == 2.0  # the embedded broker's default

    monkeypatch.setenv("DELAYQ_ACK_TIMEOUT_S", "42")
    monkeypatch.setenv("DELAYQ_SESSION_TIMEOUT_S", "3")
    monkeypatch.setenv("DELAYQ_STANDBY_REPLICAS", "2")  # the run's own setting wins

    settings = cluster.worker_settings()
    assert (settings.ack_timeout_s, settings.standby_replicas) == (42.0, 0)
    assert cluster.worker_session_timeout_s() == 3.0


def _state(pid: int) -> str:
    """The process's state letter from /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_frozen_worker_is_stopped_until_thawed_and_still_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    # Given a worker whose process is a plain sleep in its own group (no broker needed)
    names = Names("chaosx", 4, (("out", 1),))
    worker = Cluster(names, tmp_path, tmp_path / "data").new_worker()
    worker.proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # When it is frozen, then thawed
        worker.freeze()
        # Then it stops (signals arrive asynchronously: waited for), and runs again once thawed
        wait_for(lambda: _state(worker.pid) == "T", "the frozen worker to stop", timeout=5)
        worker.thaw()
        wait_for(lambda: _state(worker.pid) != "T", "the thawed worker to run", timeout=5)
        # And a worker stopped while frozen is thawed first, so SIGTERM ends it at once
        worker.freeze()
        assert worker.stop(timeout=5) == -signal.SIGTERM
        assert "SIGSTOP (frozen)" in worker.log_path.read_text()
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()


# With 2 ingest partitions, b"moved" and b"other" live in partition 0, b"mixed" in partition 1.
PARTITIONS = 2


def test_the_job_ids_of_these_tests_live_where_they_say() -> None:
    homes = {job: home_partition(job, PARTITIONS) for job in (b"moved", b"other", b"mixed")}
    assert homes == {b"moved": 0, b"other": 0, b"mixed": 1}


def _cancelled_by_a_moved_cancel(next_acked_ms: int | None) -> Book:
    """A job scheduled at home for ``DUE``, cancelled through partition 1 (acknowledged 500 ms
    before due) and moved home; then another job's record there, acknowledged at
    ``next_acked_ms``; the cancelled job forwarded at due."""
    acks = AckTimes()
    acks.note(1, 0, DUE - 500)  # the cancel, where it was written
    if next_acked_ms is not None:
        acks.note(0, 2, next_acked_ms)  # the record after the cancel's copy at home
    book = Book(acks, PARTITIONS)
    _schedule(book, 0, b"moved", DUE, b"moved|0", T)
    _cancel(book, 0, b"moved", T + 10, partition=1)
    _cancel(book, 1, b"moved", T + 10, moved_from=(1, 0))
    _schedule(book, 2, b"other", DUE + 5_000, b"other|0", T + 20)
    book.close_ingest()
    book.add_forward(_forward(b"moved", DUE, b"moved|0", DUE + 1))
    book.add_forward(_forward(b"other", DUE + 5_000, b"other|0", DUE + 5_001))
    return book


def test_a_moved_cancel_whose_copy_was_home_before_due_and_still_lost_fails_the_run() -> None:
    # Given a cancel acknowledged 500 ms before due off its job's home partition, whose copy
    # there was acknowledged before due (a later record there was, 100 ms before due)
    # When the job is forwarded anyway
    figures = book_figures(_cancelled_by_a_moved_cancel(next_acked_ms=DUE - 100))

    # Then the guard must have held it: the run fails
    assert figures["cancelled_acked_before_due_still_forwarded"] == 1
    assert figures["commands_off_home"] == figures["moved_copies"] == 1
    assert figures["hop_ms"]["max"] == 400  # an upper bound: acknowledged at home by then
    assert failures(figures) == [SUPERSEDED_ACKED_BEFORE_DUE]


@pytest.mark.parametrize(
    "next_acked_ms", [DUE + 100, None], ids=["home after due", "home acknowledgement unknown"]
)
def test_a_moved_cancel_acknowledged_before_due_must_win_wherever_its_copy_landed(
    next_acked_ms: int | None,
) -> None:
    # Given a cancel acknowledged 500 ms before due off its job's home partition, whose copy
    # there cannot be shown to have been acknowledged before due
    # When the job is forwarded
    figures = book_figures(_cancelled_by_a_moved_cancel(next_acked_ms))

    # Then it is a failure: the guard holds a job while a command for it waits to be moved
    assert figures[SUPERSEDED_ACKED_BEFORE_DUE] == 1
    assert figures["cancel_races_forwarded"] == figures["races_ack_unknown"] == 0
    assert failures(figures) == [SUPERSEDED_ACKED_BEFORE_DUE]


def test_a_mixed_job_is_judged_in_the_order_its_commands_reached_its_home_partition() -> None:
    # Given a job scheduled through partition 0 (off home), then replaced 300 ms later at home,
    # before the first schedule's copy reached home: delayq applies the first schedule last
    acks = AckTimes()
    acks.note(0, 0, T + 10)
    acks.note(1, 0, T + 310)
    book = Book(acks, PARTITIONS)
    _schedule(book, 0, b"mixed", DUE, b"mixed|0", T, partition=0)
    _schedule(book, 0, b"mixed", DUE + 1_000, b"mixed|1", T + 300, partition=1)
    _schedule(book, 1, b"mixed", DUE, b"mixed|0", T, partition=1, moved_from=(0, 0))
    book.close_ingest()

    # When the first schedule is forwarded (and the replace is not)
    book.add_forward(_forward(b"mixed", DUE, b"mixed|0", DUE + 1))

    # Then that is the job's final state: nothing is missing, the reorder is reported apart
    figures = book_figures(book)
    assert figures["never_forwarded"] == 0
    assert figures["mixed_jobs"] == figures["mixed_outcome_changed"] == 1
    assert figures["mixed_close_pairs"] == figures["mixed_reordered_within_1s"] == 1
    assert figures["mixed_reordered_further_apart"] == 0
    assert failures(figures) == []


def test_a_moved_command_the_home_never_applies_fails_the_run() -> None:
    # Given two schedules written to partition 1, off their home partition 0, whose copies
    # reached home out of order (the second first), and the second's moved again
    book = Book(AckTimes(), PARTITIONS)
    _schedule(book, 0, b"moved", DUE, b"moved|0", T, partition=1)
    _schedule(book, 1, b"other", DUE, b"other|0", T, partition=1)
    _schedule(book, 0, b"other", DUE, b"other|0", T, moved_from=(1, 1))
    _schedule(book, 1, b"moved", DUE, b"moved|0", T, moved_from=(1, 0))
    _schedule(book, 2, b"other", DUE, b"other|0", T, moved_from=(1, 1))
    book.close_ingest()
    book.add_forward(_forward(b"other", DUE, b"other|0", DUE + 1))

    # When the home skips the copies at or below the highest source offset it applied
    figures = book_figures(book)

    # Then the first schedule was never applied: the run fails (it is not forwarded either)
    assert (figures["moved_copies"], figures["moved_copies_skipped"]) == (3, 2)
    assert [job_id for job_id, _cmd in book.never_applied] == [b"moved"]
    assert set(failures(figures)) == {MOVED_NEVER_APPLIED, "never_forwarded"}


def test_the_load_routes_every_command_of_a_job_through_its_partitioners() -> None:
    names = tuple(PARTITIONERS)
    ids = [b"chaos-%08d" % n for n in range(3_000)]

    # When each job id picks its routes, twice
    picked = [routes(job_id, names, mixed_share=0.2) for job_id in ids]

    # Then the same each time, each partitioner for about a third of the jobs, and about a
    # fifth of them send their replaces and cancels through another one
    assert picked == [routes(job_id, names, mixed_share=0.2) for job_id in ids]
    for name in names:
        assert 0.28 < sum(first == name for first, _then in picked) / len(ids) < 0.39
    mixed = sum(first != then for first, then in picked) / len(ids)
    assert 0.17 < mixed < 0.23
    assert all(first == then for first, then in (routes(j, ("fnv1a",), 1.0) for j in ids))


async def test_the_load_sends_a_mixed_jobs_follow_ups_through_its_other_partitioner() -> None:
    # Given a generator whose every job is mixed, over 12 partitions
    config = LoadConfig(1, 1, 1, partitioners=tuple(PARTITIONERS), mixed_share=1.0, partitions=12)
    load = LoadGenerator("127.0.0.1:1", "ingest", ["out"], "p", config)
    job_id = b"p-00000001"
    first, then = routes(job_id, config.partitioners, 1.0)

    # When its first schedule and a cancel are routed
    partitions = [load._partition(job_id, new=True), load._partition(job_id, new=False)]

    # Then each goes where its partitioner puts the id, and the load counts what it did
    assert partitions == [PARTITIONERS[first](job_id, 12), PARTITIONERS[then](job_id, 12)]
    stats = load.stats
    assert stats.by_partitioner == {first: 1, then: 1}
    assert (stats.mixed_jobs, stats.mixed_commands) == (1, 1)
    assert stats.off_home == sum(p != home_partition(job_id, 12) for p in partitions)


# Recurring jobs: a series every 1 s from FIRST, judged per occurrence (chaos/series.py).
EVERY = 1_000
FIRST = T + 2_000
HORIZON = FIRST + 5 * EVERY  # the ingest read: occurrences FIRST .. FIRST + 5 s are expected


def _series(
    book: Book,
    offset: int,
    job: bytes,
    value: bytes,
    ts: int,
    until: int | None = None,
    first: int = FIRST,
) -> None:
    headers = [
        ("delayq-target", b"out"),
        ("delayq-due-ms", str(first).encode()),
        ("delayq-every-ms", str(EVERY).encode()),
    ]
    if until is not None:
        headers.append(("delayq-until-ms", str(until).encode()))
    book.add_ingest(0, offset, ts, job, value, headers)


def _occurrences(book: Book, job: bytes, value: bytes, steps: range, late_ms: int = 5) -> None:
    """Forwards of the occurrences FIRST + k s, k in ``steps``, each ``late_ms`` after due."""
    for k in steps:
        due = FIRST + k * EVERY
        book.add_forward(_forward(job, due, value, due + late_ms))


def test_a_series_forwarded_at_every_occurrence_passes_apart_from_the_one_shot_jobs() -> None:
    # Given a series every second and a one-shot job
    book = Book(AckTimes())
    _series(book, 0, b"series", b"series|0", T)
    _schedule(book, 1, b"once", T + 3_000, b"once|0", T)
    book.close_ingest(horizon_ms=HORIZON)
    assert book.waiting() == 2  # the one-shot job, and the series up to the horizon

    # When each of its six occurrences up to the horizon is forwarded (one of them twice, and
    # one more after the horizon), and the one-shot job once
    _occurrences(book, b"series", b"series|0", range(6))
    _occurrences(book, b"series", b"series|0", range(2, 3), late_ms=900)
    _occurrences(book, b"series", b"series|0", range(6, 7))
    book.add_forward(_forward(b"once", T + 3_000, b"once|0", T + 3_001))

    # Then every occurrence is accounted for, none of them as a one-shot figure
    figures = book_figures(book, occurrences_skipped=0)
    assert book.waiting() == 0
    assert (figures["series"], figures["series_jobs"]) == (1, 1)
    assert (figures["occurrences_expected"], figures["occurrences_forwarded"]) == (6, 6)
    assert figures["occurrence_duplicates"] == 1
    assert figures["occurrence_forward_records"] == 8
    assert figures["occurrence_lateness_ms"] == {"p50": 5, "p99": 5, "max": 5}
    assert figures["expected_forwards"] == figures["forwarded"] == figures["jobs_scheduled"] == 1
    assert figures["duplicates"] == figures["mismatched_forwards"] == 0
    assert figures["duplicate_rate"] == 0.0
    assert failures(figures) == []


@pytest.mark.parametrize(
    ("skipped", "failed"), [(2, []), (1, [OCCURRENCES_MISSING])], ids=["counted", "not counted"]
)
def test_occurrences_never_forwarded_must_be_counted_as_skipped_by_the_workers(
    skipped: int, failed: list[str]
) -> None:
    # Given a series whose occurrences 1 and 2 are never forwarded (a stall: the worker sent
    # only the latest one due, 3)
    book = Book(AckTimes())
    _series(book, 0, b"series", b"series|0", T)
    book.close_ingest(horizon_ms=HORIZON)
    _occurrences(book, b"series", b"series|0", range(1))
    _occurrences(book, b"series", b"series|0", range(3, 6))

    # When the workers counted ``skipped`` occurrences as skipped
    figures = book_figures(book, occurrences_skipped=skipped)

    # Then the run fails only if they counted fewer than were never forwarded
    assert figures["occurrences_never_forwarded"] == 2
    assert figures["occurrences_missing_beyond_skipped"] == 2 - skipped
    assert failures(figures) == failed
    [sample] = book.series_tally()[1]
    assert sample["missing_occurrences_ms"] == [FIRST + EVERY, FIRST + 2 * EVERY]


def test_a_series_that_stops_before_the_horizon_is_waited_for_and_missing() -> None:
    # Given a series forwarded up to its third occurrence only
    book = Book(AckTimes())
    _series(book, 0, b"series", b"series|0", T)
    book.close_ingest(horizon_ms=HORIZON)
    _occurrences(book, b"series", b"series|0", range(3))

    # Then the run still waits for it, and the occurrences after the last forward are missing
    assert book.series_behind == {(b"series", 0)}
    figures = book_figures(book, occurrences_skipped=0)
    assert figures["series_behind_at_stop"] == 1
    assert figures["occurrences_never_forwarded"] == 3
    assert failures(figures) == [OCCURRENCES_MISSING]


def test_an_occurrence_forwarded_before_its_due_time_or_off_the_rule_fails_the_run() -> None:
    # Given a series every second until its third occurrence
    book = Book(AckTimes())
    _series(book, 0, b"series", b"series|0", T, until=FIRST + 2 * EVERY + 500)
    book.close_ingest(horizon_ms=HORIZON)

    # When its first occurrence is forwarded 1 ms early, then one between two occurrences, one
    # after its until, and its value under another job id
    book.add_forward(_forward(b"series", FIRST, b"series|0", FIRST - 1))
    _occurrences(book, b"series", b"series|0", range(1, 3))
    book.add_forward(_forward(b"series", FIRST + 500, b"series|0", FIRST + 600))
    book.add_forward(_forward(b"series", FIRST + 3 * EVERY, b"series|0", FIRST + 3 * EVERY))
    book.add_forward(_forward(b"other", FIRST, b"series|0", FIRST))

    # Then the early one counts apart from the one-shot figure, the others are mismatched
    figures = book_figures(book, occurrences_skipped=0)
    assert (figures["occurrences_expected"], figures["occurrences_forwarded"]) == (3, 3)
    assert figures["occurrences_forwarded_early"] == 1
    assert figures["forwarded_early"] == 0
    assert figures["mismatched_forwards"] == 3
    assert figures["foreign_duplicates"] == 1
    assert set(failures(figures)) == {
        OCCURRENCES_EARLY,
        "mismatched_forwards",
        "foreign_duplicates",
    }


def _cancelled_series(acked_ms: int | None) -> Book:
    """A series cancelled 2.5 s after its first occurrence, the cancel acknowledged at
    ``acked_ms``; occurrences 0 and 1 forwarded."""
    acks = AckTimes()
    if acked_ms is not None:
        acks.note(0, 1, acked_ms)
    book = Book(acks)
    _series(book, 0, b"series", b"series|0", T)
    _cancel(book, 1, b"series", FIRST + 2_500)
    book.close_ingest(horizon_ms=HORIZON)
    _occurrences(book, b"series", b"series|0", range(2))
    return book


def test_an_occurrence_due_after_the_cancel_was_acknowledged_must_not_be_forwarded() -> None:
    # Given a series whose cancel was acknowledged 3.5 s after its first occurrence
    book = _cancelled_series(acked_ms=FIRST + 3_500)
    assert book.waiting() == 0  # a cancelled series is not waited for

    # When occurrences 3 (due before the acknowledgement) and 4 (after it) are forwarded
    _occurrences(book, b"series", b"series|0", range(3, 5))

    # Then the second fails the run; occurrence 2, never forwarded, was missed (not cut off:
    # the series forwarded a later one)
    figures = book_figures(book, occurrences_skipped=1)
    assert figures["series_cancelled"] == 1
    assert figures["occurrences_after_cancel_acked_before_due"] == 1
    assert (figures["occurrences_expected"], figures["occurrences_forwarded"]) == (4, 3)
    assert (figures["occurrences_never_forwarded"], figures["occurrences_cut_off"]) == (1, 0)
    assert failures(figures) == [OCCURRENCES_AFTER_END]
    [sample] = book.occurrence_samples
    assert sample.detail["ended_acked_ms"] == FIRST + 3_500


def test_occurrences_after_a_series_last_forward_are_cut_off_by_its_cancel() -> None:
    # Given a series whose cancel was acknowledged at its fourth occurrence's due time
    book = _cancelled_series(acked_ms=FIRST + 3 * EVERY)

    # When nothing more of it is forwarded, or occurrence 3 is (due when it was acknowledged)
    quiet = book_figures(book, occurrences_skipped=0)
    _occurrences(book, b"series", b"series|0", range(3, 4))
    raced = book_figures(book, occurrences_skipped=1)

    # Then neither fails: 2 and 3 were cut off by the cancel, or 2 was skipped
    assert (quiet["occurrences_cut_off"], quiet["occurrences_cut_off_max_ms"]) == (2, EVERY)
    assert quiet["occurrences_never_forwarded"] == 0
    assert raced["occurrences_cut_off"] == 0
    assert raced["occurrences_never_forwarded"] == 1
    assert failures(quiet) == failures(raced) == []


def test_an_occurrence_after_a_cancel_whose_acknowledgement_is_unknown_is_a_race() -> None:
    # Given a series cancelled (written 2.5 s after its first occurrence, acknowledgement
    # unknown)
    book = _cancelled_series(acked_ms=None)

    # When occurrence 3 is forwarded
    _occurrences(book, b"series", b"series|0", range(3, 4))

    # Then that is a race, not a failure
    figures = book_figures(book, occurrences_skipped=1)
    assert figures["occurrence_races_ack_unknown"] == 1
    assert figures["occurrences_after_cancel_or_replace_acked_before_due"] == 0
    assert failures(figures) == []


def test_a_replaced_series_ends_when_the_replace_is_acknowledged_and_the_new_one_goes_on() -> None:
    # Given a series replaced (acknowledged 1.5 s after its first occurrence) by another with
    # the next value, every second from the old one's third occurrence
    acks = AckTimes()
    acks.note(0, 1, FIRST + 1_500)
    book = Book(acks)
    _series(book, 0, b"series", b"series|0", T)
    _series(book, 1, b"series", b"series|1", FIRST + 1_400, first=FIRST + 2 * EVERY)
    book.close_ingest(horizon_ms=HORIZON)

    # When the old one fires at 0, 1 and 2 (due after the replace), the new one from 2 on
    _occurrences(book, b"series", b"series|0", range(3))
    _occurrences(book, b"series", b"series|1", range(2, 6))

    # Then the old value's occurrence due after the replace fails the run, and nothing else
    figures = book_figures(book, occurrences_skipped=0)
    assert (figures["series"], figures["series_replaced"]) == (2, 1)
    assert (figures["occurrences_expected"], figures["occurrences_forwarded"]) == (6, 6)
    assert figures["occurrences_after_replace_acked_before_due"] == 1
    assert failures(figures) == [OCCURRENCES_AFTER_END]


async def test_the_load_starts_series_and_cancels_and_replaces_them_too() -> None:
    # Given a generator whose every new job is a series
    config = LoadConfig(100, 1, 10_000, recurring_share=1.0, partitions=4)
    load = LoadGenerator("127.0.0.1:1", "ingest", ["out"], "p", config)
    now = now_ms()

    # When it makes a few hundred commands
    commands = [load._next(now) for _ in range(400)]

    # Then each schedule is a series every 1-5 s from within the delay range, some ending
    schedules = [dict(headers) for _key, value, headers, _new in commands if value is not None]
    assert all(EVERY_MS[0] <= int(h["delayq-every-ms"]) <= EVERY_MS[1] for h in schedules)
    firsts = [
        int(h["delayq-due-ms"]) - now if "delayq-due-ms" in h else int(h["delayq-delay-ms"])
        for h in schedules
    ]
    assert all(0 <= first <= 10_000 for first in firsts)
    stats = load.stats
    assert 0 < stats.series_until < stats.series == stats.new
    # And the cancels and replaces pick series (the only jobs there are), none once cancelled
    assert stats.series_cancels == stats.cancels > 0
    assert stats.series_replaces == stats.replaces > 0
    keys = [key for key, _value, _headers, _new in commands]
    for at, (key, value, _headers, _new) in enumerate(commands):
        assert value is not None or key not in keys[at + 1 :], f"{key!r} used after its cancel"
