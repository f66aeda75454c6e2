"""Moving commands to their job's home partition (app/moving.py), with a stub producer.

Two ingest partitions, both owned here. The recording producer's record batches wait for the
test to acknowledge or fail them, as a broker would.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from app.gaps import Record
from app.moving import crc32_partition, fnv1a_partition, producer_partitioner
from app.names import HEADER_DUE_MS, HEADER_MOVED_FROM
from tables.keys import APPLIED_KEY, MOVED_OUT_KEY, encode_due_ms, moved_key
from tests.unit.engine_harness import NOW, Harness
from tests.unit.test_ingest import Wiring, cancel, schedule

PARTITIONS = 2


def home(job_id: bytes) -> int:
    partition: int = DefaultPartitioner()(job_id, [0, 1], [0, 1])
    return partition


def ids_at_home(partition: int, count: int) -> list[bytes]:
    found = [f"job-{n}".encode() for n in range(100)]
    return [job_id for job_id in found if home(job_id) == partition][:count]


def moving(h: Harness) -> Wiring:
    wiring = Wiring(h)
    wiring.ctx = dataclasses.replace(wiring.ctx, partitions=PARTITIONS)
    return wiring


def moved(record: Record, source: int, offset: int, at: int) -> Record:
    """``record`` as it lands on its home partition at offset ``at``."""
    headers = [*record.headers, (HEADER_MOVED_FROM, f"{source}:{offset}".encode())]
    partition = home(record.key or b"")
    return dataclasses.replace(record, partition=partition, offset=at, headers=headers)


async def turn() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for ``condition``, looking at every turn of the event loop."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


def ack(h: Harness, index: int, error: BaseException | None = None) -> None:
    future: asyncio.Future[Any] = h.producer.batch_acks[index]
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def test_a_command_off_its_home_is_moved_there_whole_and_held_until_acknowledged(
    h: Harness,
) -> None:
    # Given a schedule written to partition 0 for a job whose home is partition 1
    wiring = moving(h)
    [job_id] = ids_at_home(1, 1)
    record = dataclasses.replace(schedule(7, job_id, NOW + 5, partition=0), timestamp=1_700.5)
    # When it is applied
    await wiring.apply(record)
    await turn()
    # Then it is not scheduled in partition 0, and counts as handled there
    assert h.engine.get(0, job_id) is None
    assert h.engine.applied_offset(0) == 7
    # And it is sent to partition 1 of the ingest topic: key, value, headers, timestamp, origin
    [(topic, partition, [(key, value, headers, timestamp_ms)])] = h.producer.record_batches
    assert (topic, partition, key, value, timestamp_ms) == ("ingest", 1, job_id, b"v", 1_700_500)
    assert headers == [*record.headers, (HEADER_MOVED_FROM, b"0:7")]
    # And the consumer may not commit past it until the broker acknowledges the move
    assert wiring.held == {(0, 7)}
    ack(h, 0)
    await h.engine.moves_settled()
    assert wiring.held == set()
    assert h.engine.stats.moved == 1


async def test_moves_to_one_partition_go_one_batch_at_a_time_and_a_failed_one_first(
    h: Harness,
) -> None:
    # Given five commands on partition 0 for jobs at home in partition 1 (two per record batch)
    wiring = moving(h)
    job_ids = ids_at_home(1, 5)
    await wiring.apply(*(schedule(n, job_id, NOW + 5) for n, job_id in enumerate(job_ids)))
    await turn()
    # Then only the first batch is sent until the broker answers
    assert len(h.producer.record_batches) == 1
    # When it fails
    ack(h, 0, RuntimeError("broker away"))
    await until(lambda: len(h.producer.record_batches) == 2)  # after the mover's backoff
    # Then the same two commands are sent again before any later one
    assert len(h.producer.record_batches) == 2
    first, again = h.producer.record_batches
    assert [r[0] for r in again[2]] == [r[0] for r in first[2]] == job_ids[:2]
    # When each batch is acknowledged in turn
    for index in range(1, 4):
        ack(h, index)
        await turn()
    await h.engine.moves_settled()
    # Then every command went out in its source order, each once after the failure
    sent = [r[0] for batch in h.producer.record_batches[1:] for r in batch[2]]
    assert sent == job_ids
    assert wiring.held == set()


async def test_a_moved_command_is_applied_once_at_home(h: Harness) -> None:
    # Given a job at home in partition 1, scheduled by a command moved from partition 0
    wiring = moving(h)
    [job_id] = ids_at_home(1, 1)
    first = moved(schedule(3, job_id, NOW + 5, partition=0), 0, 3, at=10)
    await wiring.apply(first)
    assert h.engine.get(1, job_id) is not None
    # And a cancel of it, moved after it, applied
    await wiring.apply(moved(cancel(4, job_id, partition=0), 0, 4, at=11))
    assert h.engine.get(1, job_id) is None
    # When the schedule is moved again (its source partition's new owner after a crash)
    await wiring.apply(moved(schedule(3, job_id, NOW + 5, partition=0), 0, 3, at=12))
    # Then it is skipped: the cancelled job stays cancelled
    assert h.engine.get(1, job_id) is None
    assert h.engine.stats.moves_skipped == 1
    # And the mark of the moves from partition 0 is changelogged with the commands
    assert (1, moved_key(0), (4).to_bytes(8, "big")) in h.changelog
    assert h.engine.moved_offset(1, 0) == 4


async def test_a_move_read_back_from_a_gap_holds_the_commit_below_the_gap(h: Harness) -> None:
    # Given offset 0 of partition 0 applied, and offsets 1-2 not delivered: a command for a job
    # at home in partition 1 at offset 2
    wiring = moving(h)
    [here] = ids_at_home(0, 1)
    [away] = ids_at_home(1, 1)
    await wiring.apply(schedule(0, here, NOW + 5))
    wiring.topic[0, 2] = schedule(2, away, NOW + 5)
    # When offset 3 is delivered: the gap is read back and offset 2 moved
    await wiring.apply(schedule(3, here, NOW + 6))
    await turn()
    # Then the consumer may not commit from the gap on until the move is acknowledged (Faust
    # counts the offsets it skipped as done)
    assert (0, 1) in wiring.held
    assert wiring.gaps == []
    ack(h, 0)
    await h.engine.moves_settled()
    await until(lambda: wiring.gaps == [(0, 1, 2)])
    assert (0, 1) not in wiring.held


async def test_a_command_replayed_after_a_crash_is_moved_again(h: Harness) -> None:
    # Given a command off its home, applied (moved) before a crash
    wiring = moving(h)
    [job_id] = ids_at_home(1, 1)
    await wiring.apply(schedule(0, job_id, NOW + 5))
    await turn()
    ack(h, 0)
    await h.engine.moves_settled()
    # When Faust delivers it again (the consumer had not committed past it)
    await wiring.apply(schedule(0, job_id, NOW + 5))
    await turn()
    # Then it is moved again (its first move may not have reached the broker)
    assert len(h.producer.record_batches) == 2
    ack(h, 1)
    await h.engine.moves_settled()


async def test_a_bad_command_off_its_home_is_dead_lettered_where_it_landed_not_moved(
    h: Harness,
) -> None:
    # Given a record with a value and no target, on partition 0, keyed for partition 1
    wiring = moving(h)
    [job_id] = ids_at_home(1, 1)
    await wiring.apply(Record("ingest", 0, 0, job_id, b"v", [(HEADER_DUE_MS, b"1")], None))
    await h.engine.dead_letters_settled()
    # Then it is dead-lettered and nothing is moved
    assert len(h.producer.to("dlq")) == 1
    assert h.producer.record_batches == []


async def test_a_replay_of_the_home_changelog_applies_the_mark_of_its_moves(h: Harness) -> None:
    # Given one batch: a command moved to partition 1 (its copy at offset 3 there), then a
    # command at a higher offset of partition 0
    wiring = moving(h)
    [job_id] = ids_at_home(1, 1)
    [other] = ids_at_home(0, 1)
    copy = moved(schedule(7, job_id, NOW + 5, partition=0), 0, 7, at=3)
    await wiring.apply(copy, schedule(500, other, NOW + 5, partition=0))
    assert (1, moved_key(0), (7).to_bytes(8, "big")) in h.changelog
    # When a standby replays partition 1's changelog
    h.store.replay_begins(1)
    replayed = [h.store.fresh(1, headers) for p, headers in h.changelog_headers if p == 1]
    # Then it applies every record: each is tagged with an offset of partition 1, none looks
    # like a late writer's (a mark tagged with partition 0's offset 500 would hide the rest)
    assert replayed and all(replayed)
    assert h.store.late_skipped == 0


def test_the_partitioners_of_other_clients() -> None:
    # FNV-1a 32 of b"foobar" is 0xBF9CF968: as int32 -1080231576; sarama takes the remainder
    # (Go's, with the sign of the dividend) and negates it: 1080231576 % 5 = 1, % 8 = 0.
    assert fnv1a_partition(b"foobar", 5) == 1
    assert fnv1a_partition(b"foobar", 8) == 0
    # b"": the offset basis 0x811C9DC5, as int32 -2128831035: 2128831035 % 8 = 3.
    assert fnv1a_partition(b"", 8) == 3
    # CRC-32 of b"a" is 0xE8B7BE43 (unsigned): % 8 = 3, where FNV-1a gives 4.
    assert crc32_partition(b"a", 8) == 3
    assert producer_partitioner(b"foobar", 0, 8).startswith("FNV-1a")
    assert producer_partitioner(b"a", 3, 8).startswith("CRC-32")


async def test_a_new_owner_moves_again_what_the_last_one_may_not_have(h: Harness) -> None:
    # Given partition 0 as a killed owner left it: commands 5-7 moved away but not known
    # acknowledged (moved-out mark 5), its replay mark at 7
    wiring = moving(h)
    job_ids = ids_at_home(1, 3)
    for offset, job_id in zip((5, 6, 7), job_ids, strict=True):
        wiring.topic[0, offset] = schedule(offset, job_id, NOW + 5)
    h.store.put_local(0, MOVED_OUT_KEY, encode_due_ms(5))
    h.store.put_local(0, APPLIED_KEY, encode_due_ms(7))
    # When the stream's first record for it is offset 8 (it did not deliver 5-7 again)
    [later] = ids_at_home(1, 4)[3:]
    await wiring.apply(schedule(8, later, NOW + 5))
    await turn()
    # Then 5-7 are read back and moved again, before 8
    assert wiring.reads == [(0, 5, 8)]
    ack(h, 0)
    await turn()
    ack(h, 1)
    await h.engine.moves_settled()
    sent = [r[0] for batch in h.producer.record_batches for r in batch[2]]
    assert sent == [*job_ids, later]
    # And the next batch marks every move below 10 acknowledged
    await wiring.apply(schedule(9, ids_at_home(0, 1)[0], NOW + 5))
    assert (0, MOVED_OUT_KEY, encode_due_ms(10)) in h.changelog


async def test_a_moved_from_header_off_the_home_partition_is_no_move_the_command_is_moved(
    h: Harness,
) -> None:
    # Given a schedule for a job at home in partition 1, written to partition 0 at offset 6 with
    # a delayq-moved-from header of its own (a producer's, or copied by a mirror)
    wiring = moving(h)
    [job_id] = ids_at_home(1, 1)
    forged = schedule(6, job_id, NOW + 5, partition=0)
    forged = dataclasses.replace(forged, headers=[*forged.headers, (HEADER_MOVED_FROM, b"1:900")])
    # When partition 0's agent applies it
    await wiring.apply(forged)
    await turn()
    # Then it is not applied there, where nothing would find it, but moved home like any command
    assert h.engine.get(0, job_id) is None
    [(topic, partition, [(_key, _value, headers, _ts)])] = h.producer.record_batches
    assert (topic, partition) == ("ingest", 1)
    assert [v for n, v in headers if n == HEADER_MOVED_FROM] == [b"0:6"]
    ack(h, 0)
    await h.engine.moves_settled()


async def test_a_moved_from_header_naming_its_own_partition_is_no_move(h: Harness) -> None:
    # Given moves from partition 0 applied in partition 1 up to offset 4
    wiring = moving(h)
    [job_id, other] = ids_at_home(1, 2)
    await wiring.apply(moved(schedule(4, other, NOW + 5, partition=0), 0, 4, at=10))
    # When a schedule at home in partition 1 claims to be moved from partition 1 itself
    record = schedule(11, job_id, NOW + 5, partition=1)
    await wiring.apply(
        dataclasses.replace(record, headers=[*record.headers, (HEADER_MOVED_FROM, b"1:3")])
    )
    # Then it is applied as the command it is, and no mark of moves from partition 1 is kept
    assert h.engine.get(1, job_id) is not None
    assert h.engine.moved_offset(1, 1) == -1
