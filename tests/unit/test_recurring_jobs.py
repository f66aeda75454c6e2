"""Recurring jobs in the engine (app/recurrence.py, app/ingest.py, app/firing.py), with the
stub producer and a fixed clock: each occurrence forwarded once, the next written in the step
that removes the forwarded one, missed ones sent once at the latest, cancel and replace."""

from __future__ import annotations

import dataclasses

from app.commands import parse_command
from app.jobs import Job, decode_fired
from app.names import HEADER_DUE_MS, HEADER_JOB_ID
from app.recurrence import Rule
from tables.keys import due_key
from tests.unit.engine_harness import NOW, RECEIVED, Harness

EVERY = 60_000


def recurring(h: Harness, job_id: bytes, due_ms: int, rule: Rule, partition: int = 0) -> Job:
    h.version += 1
    job = Job(job_id, due_ms, "out", None, b"v", (), h.version, rule=rule)
    h.open_db(partition)
    h.engine.schedule(partition, job, RECEIVED)
    return job


def forwarded_occurrences(h: Harness) -> list[tuple[bytes, int]]:
    """(job id, delayq-due-ms) of every forward so far."""
    found = []
    for _topic, _key, _value, _partition, headers in h.producer.to("out"):
        named = dict(headers)
        found.append((named[HEADER_JOB_ID], int(named[HEADER_DUE_MS])))
    return found


async def test_each_occurrence_is_forwarded_once_and_the_next_written_with_its_removal(
    h: Harness,
) -> None:
    # Given a job every minute, first due at NOW
    recurring(h, b"poll", NOW, Rule(every_ms=EVERY))
    # When the clock passes three occurrences, the removals applied after each pass
    for minute in range(3):
        await h.fire(NOW + minute * EVERY)
        h.ack_all()
    # Then each occurrence went out once, with its own due time as the de-duplication pair
    assert forwarded_occurrences(h) == [(b"poll", NOW + m * EVERY) for m in range(3)]
    # And the job waits at its fourth occurrence: one job in the table, never early
    job = h.engine.get(0, b"poll")
    assert job is not None and job.due_ms == NOW + 3 * EVERY
    await h.fire(NOW + 3 * EVERY - 1)
    assert len(forwarded_occurrences(h)) == 3
    await h.fire(NOW + 3 * EVERY)
    assert forwarded_occurrences(h)[3:] == [(b"poll", NOW + 3 * EVERY)]
    assert h.engine.stats.rescheduled == 3
    assert h.engine.pending_count([0]) == 1


async def test_a_removal_applied_twice_writes_the_next_occurrence_once(h: Harness) -> None:
    # Given an occurrence forwarded and its removal record
    recurring(h, b"poll", NOW, Rule(every_ms=EVERY))
    await h.fire(NOW)
    [(partition, entries)] = h.producer.take_fired()
    # When the agent applies it, and again (a replay after a crash)
    h.engine.remove_fired(partition, entries)
    h.engine.remove_fired(partition, entries)
    # Then the series holds one job, at the next occurrence
    job = h.engine.get(0, b"poll")
    assert job is not None and job.due_ms == NOW + EVERY
    assert [k for k, _v in h.engine.store.scan(0, b"D", b"E")] == [due_key(NOW + EVERY, b"poll")]


async def test_missed_occurrences_go_out_once_at_the_latest_then_the_series_goes_on(
    h: Harness,
) -> None:
    # Given a job every minute, due at NOW, and no pass for 10.5 minutes (the worker was down)
    recurring(h, b"poll", NOW, Rule(every_ms=EVERY))
    await h.fire(NOW + 10 * EVERY + EVERY // 2)
    h.ack_all()
    # Then one forward, of the latest occurrence due (NOW + 10 min); the ten before it skipped
    assert forwarded_occurrences(h) == [(b"poll", NOW + 10 * EVERY)]
    assert h.engine.stats.occurrences_skipped == 10
    # And its removal carried that occurrence: the series goes on from there
    job = h.engine.get(0, b"poll")
    assert job is not None and job.due_ms == NOW + 11 * EVERY


async def test_the_fired_record_names_the_occurrence_a_catch_up_sent(h: Harness) -> None:
    recurring(h, b"poll", NOW, Rule(every_ms=EVERY))
    await h.fire(NOW + 2 * EVERY)
    [(_partition, [(key, _version, occurrence)])] = h.producer.take_fired()
    assert (key, occurrence) == (due_key(NOW, b"poll"), NOW + 2 * EVERY)


async def test_the_series_ends_after_its_last_occurrence(h: Harness) -> None:
    recurring(h, b"twice", NOW, Rule(every_ms=EVERY, until_ms=NOW + EVERY))
    for minute in range(3):
        await h.fire(NOW + minute * EVERY)
        h.ack_all()
    assert forwarded_occurrences(h) == [(b"twice", NOW), (b"twice", NOW + EVERY)]
    assert h.engine.get(0, b"twice") is None
    assert h.engine.pending_count([0]) == 0


async def test_a_cancel_ends_the_series_even_with_an_occurrence_in_flight(h: Harness) -> None:
    # Given an occurrence forwarded, its removal not applied yet
    recurring(h, b"poll", NOW, Rule(every_ms=EVERY))
    await h.fire(NOW)
    removals = h.producer.take_fired()
    # When the job is cancelled, then the removal comes back
    h.engine.cancel(0, b"poll")
    for partition, entries in removals:
        h.engine.remove_fired(partition, entries)
    # Then nothing is left and nothing more is forwarded
    assert h.engine.get(0, b"poll") is None
    await h.fire(NOW + 5 * EVERY)
    assert forwarded_occurrences(h) == [(b"poll", NOW)]


async def test_a_replace_in_flight_keeps_the_new_rule(h: Harness) -> None:
    # Given an occurrence in flight, and the series replaced by an hourly one due at the same time
    job = recurring(h, b"poll", NOW, Rule(every_ms=EVERY))
    await h.fire(NOW)
    removals = h.producer.take_fired()
    h.version += 1
    hourly = dataclasses.replace(job, rule=Rule(every_ms=60 * EVERY), version=h.version)
    h.engine.schedule(0, hourly, RECEIVED)
    # When the removal of the old version comes back
    for partition, entries in removals:
        h.engine.remove_fired(partition, entries)
    # Then the replacement is due (same due time), and after it the series is hourly
    await h.fire(NOW + 1)
    h.ack_all()
    assert forwarded_occurrences(h) == [(b"poll", NOW), (b"poll", NOW)]
    rescheduled = h.engine.get(0, b"poll")
    assert rescheduled is not None and rescheduled.due_ms == NOW + 60 * EVERY


async def test_a_one_shot_removal_record_carries_no_occurrence(h: Harness) -> None:
    h.schedule("once", NOW)
    await h.fire(NOW)
    [(_partition, entries)] = h.producer.take_fired()
    assert [occurrence for _key, _version, occurrence in entries] == [NOW]
    assert decode_fired(b"") == []


def test_a_dead_lettered_occurrence_carries_what_schedules_the_series_again() -> None:
    # Given a recurring job whose occurrence could not be forwarded (its dead letter's headers)
    job = Job(b"poll", NOW, "out", None, b"v", (), 7, rule=Rule(every_ms=EVERY, until_ms=NOW + 9))
    headers = job.contract_headers()
    # When they are written back to the ingest topic, then they schedule the same series again
    again = parse_command(
        b"poll", b"v", headers, timestamp_ms=NOW, version=8, forbidden_targets=frozenset()
    )
    assert isinstance(again, Job)
    assert (again.due_ms, again.rule) == (NOW, job.rule)
