"""tables/store.py: the changelog's persisted offset follows this process's acks only while it is
the changelog partition's only writer (step 6 of the durability order in app/ingest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rocksdict import Options, Rdict

from tables.keys import UNACKED_KEY, encode_due_ms
from tables.store import TAG_HEADER, PartitionDB, PartitionStore


@dataclass
class Acked:
    offset: int


class Changelog:
    """A changelog partition that other writers may append to between this process's flushes;
    ``held``: its acknowledgements wait for :meth:`ack_all` (the broker is slow, or gone)."""

    def __init__(self, end: int = 0, held: bool = False) -> None:
        self.end = end
        self.held = held
        self.acks: list[asyncio.Future[Any]] = []

    async def send(
        self,
        partition: int,
        records: Sequence[tuple[bytes, bytes | None, list[tuple[str, bytes]]]],
    ) -> list[tuple[Awaitable[Any], int]]:
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        if not self.held:
            ack.set_result(Acked(self.end))  # one record batch: its base offset
        self.end += len(records)
        return [(ack, index) for index in range(len(records))]

    def ack_all(self) -> None:
        for ack in self.acks:
            if not ack.done():
                ack.set_result(Acked(0))


def writing_store(tmp_path: Path) -> tuple[Any, PartitionStore, dict[int, int], Changelog]:
    """A store of partition 0 whose database recorded changelog offset 9, the changelog's last."""
    db: Any = Rdict(str(tmp_path / "p0"), options=Options(raw_mode=True))
    dbs: dict[int, PartitionDB] = {0: db}
    persisted: dict[int, int] = {0: 9}
    changelog = Changelog(end=10)
    store = PartitionStore(
        lambda: dbs,
        lambda partition: dbs[partition],
        changelog.send,
        persisted=lambda partition, offset: persisted.__setitem__(partition, offset),
        persisted_of=persisted.get,
    )
    return db, store, persisted, changelog


async def test_the_persisted_offset_stops_at_records_another_worker_wrote(tmp_path: Path) -> None:
    db, store, persisted, changelog = writing_store(tmp_path)
    # Given a partition whose database recorded changelog offset 9, the changelog's last
    # When this process writes two records, and the broker puts them at 10 and 11
    store.put(0, b"a", b"1")
    store.put(0, b"b", b"2")
    await store.flush_changelog()
    await asyncio.sleep(0)  # the ack callbacks
    # Then the database records offset 11
    assert persisted[0] == 11 and store.diverged == set()
    # When another worker appends three records, then this process writes one more
    changelog.end += 3
    store.put(0, b"c", b"3")
    await store.flush_changelog()
    await asyncio.sleep(0)
    # Then the database keeps offset 11: a recovery replays the other worker's records
    assert persisted[0] == 11 and store.diverged == {0}
    # And it stays there until the partition leaves this worker
    store.put(0, b"d", b"4")
    await store.flush_changelog()
    await asyncio.sleep(0)
    assert persisted[0] == 11
    store.forget(0)
    assert store.diverged == set()
    db.close()


def test_a_replay_that_skips_records_makes_the_next_recovery_start_before_them(
    tmp_path: Path,
) -> None:
    db: Any = Rdict(str(tmp_path / "p0"), options=Options(raw_mode=True))
    dbs: dict[int, PartitionDB] = {0: db}
    persisted = {0: 99}

    async def never(partition: int, records: Any, headers: Any) -> list[tuple[Awaitable[Any], int]]:
        raise AssertionError("no writes here")

    store = PartitionStore(lambda: dbs, lambda p: dbs[p], never, persisted_of=persisted.get)
    # Given a standby copy whose replay starts after offset 99
    # When the replay gives offsets 100 and 101, then 105 (102-104 were dropped on the way)
    for offset in (100, 101, 105, 106):
        store.replayed_at(0, offset)
    persisted[0] = 106  # Faust applied them: its persisted offset passed the hole
    # Then the next active recovery of the partition starts after 101, once
    assert store.gap_before(0) == 101
    assert store.gap_before(0) is None
    # And that recovery, replaying from 102 on, is no hole
    for offset in (102, 103, 104, 105):
        store.replayed_at(0, offset)
    assert store.gap_before(0) is None
    db.close()


def test_a_late_writers_records_are_skipped_by_a_replay(tmp_path: Path) -> None:
    db: Any = Rdict(str(tmp_path / "p0"), options=Options(raw_mode=True))
    dbs: dict[int, PartitionDB] = {0: db}

    async def never(partition: int, records: Any, headers: Any) -> list[tuple[Awaitable[Any], int]]:
        raise AssertionError("no writes here")

    store = PartitionStore(lambda: dbs, lambda p: dbs[p], never)

    def tagged(applied: int) -> list[tuple[str, bytes | None]]:
        return [(TAG_HEADER, encode_due_ms(applied))]

    # Given a replay that met records of a writer that had applied ingest offset 7
    assert store.fresh(0, tagged(5))
    assert store.fresh(0, tagged(7))
    # When a record comes from a writer that had applied only up to 6 (a frozen former owner
    # whose queued records reached the broker late)
    # Then it is skipped; records of the current writer, and untagged ones, are applied
    assert not store.fresh(0, tagged(6))
    assert store.late_skipped == 1
    assert store.fresh(0, tagged(7))
    assert store.fresh(0, [("other", b"x")])
    # And a replay that starts again compares from its own first record on
    store.replay_begins(0)
    assert store.fresh(0, tagged(6))
    db.close()


async def test_a_late_writers_records_first_in_a_replay_after_own_ones_are_skipped(
    tmp_path: Path,
) -> None:
    db, store, persisted, _changelog = writing_store(tmp_path)

    def tagged(applied: int) -> list[tuple[str, bytes | None]]:
        return [(TAG_HEADER, encode_due_ms(applied))]

    # Given this process's records for ingest commands up to 40, at changelog offsets 10-11
    store.tag = 39
    store.put(0, b"a", b"1")
    store.tag = 40
    store.delete(0, b"a")  # a cancel applied at ingest offset 40
    await store.flush_changelog()
    await asyncio.sleep(0)
    assert persisted[0] == 11
    # When a frozen former owner's records follow at 12-13 (it had applied only up to 35) and
    # a recovery replays the partition from 12 on
    store.replay_begins(0, 12)
    # Then the former owner's records are skipped, though nothing was replayed before them
    assert not store.fresh(0, tagged(34))
    assert not store.fresh(0, tagged(35))
    assert store.fresh(0, tagged(41))
    # And a replay from an earlier offset (a hole to fill) compares from its first record
    store.replay_begins(0, 5)
    assert store.fresh(0, tagged(34))
    db.close()


async def test_a_database_is_marked_while_its_changes_wait_for_the_changelog(
    tmp_path: Path,
) -> None:
    db: Any = Rdict(str(tmp_path / "p0"), options=Options(raw_mode=True))
    dbs: dict[int, PartitionDB] = {0: db}
    changelog = Changelog(held=True)
    store = PartitionStore(lambda: dbs, lambda p: dbs[p], changelog.send)
    # Given a cancel applied locally (a job's due key deleted), its tombstone handed over
    store.put(0, b"D-job", b"v")
    await store.flush_changelog()
    changelog.ack_all()
    await asyncio.sleep(0)
    assert db.get(UNACKED_KEY) is None
    store.delete(0, b"D-job")
    # Then, until the broker acknowledges it, the database says so: a worker that dies now
    # leaves a database ahead of its changelog, which the next start restores
    assert db.get(UNACKED_KEY) is not None
    await store.flush_changelog()
    await asyncio.sleep(0)
    assert db.get(UNACKED_KEY) is not None
    # When the broker acknowledges it, the mark goes
    changelog.ack_all()
    await asyncio.sleep(0)
    assert db.get(UNACKED_KEY) is None
    db.close()
