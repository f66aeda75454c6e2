"""The bulk restore's write path: one batch of changelog records gives what Faust's replay gives.

Faust's replay applies each record to the partition's database and ``index_restored`` keeps the
id index in step; ``PartitionStore.apply_restored`` does both for a run of records in one
write batch, plus the persisted offset. Both must end in the same database, whatever the
changelog and however it is cut into batches. The reading side (a consumer against a broker)
is covered by tests/integration/test_durability.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from tables.keys import APPLIED_KEY, due_key, encode_due_ms, id_key, index_entry
from tables.store import PartitionDB, PartitionStore

OFFSET_KEY = b"__faust\0offset__"
Record = tuple[bytes, bytes | None]


async def _no_changelog(
    partition: int, records: Sequence[Record]
) -> Sequence[tuple[Awaitable[Any], int]]:
    raise AssertionError("a restore never writes the changelog")


class Partitions:
    """Real RocksDB partitions under ``root`` and a PartitionStore over them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbs: dict[int, PartitionDB] = {}
        self.store = PartitionStore(
            lambda: self.dbs,
            self.open,
            _no_changelog,
            offset_entry=lambda offset: (OFFSET_KEY, str(offset).encode()),
        )

    def open(self, partition: int) -> PartitionDB:
        if partition not in self.dbs:
            db: Any = Rdict(str(self.root / f"p{partition}"), options=Options(raw_mode=True))
            self.dbs[partition] = db
        return self.dbs[partition]

    def items(self, partition: int) -> dict[bytes, bytes]:
        db: Any = self.dbs[partition]
        return dict(db.items())

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()  # type: ignore[attr-defined]


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Partitions, Partitions]]:
    replayed, bulk = Partitions(tmp_path / "replayed"), Partitions(tmp_path / "bulk")
    yield replayed, bulk
    replayed.close()
    bulk.close()


def replay_like_faust(into: Partitions, partition: int, records: list[Record]) -> None:
    """Faust's recovery: apply each record, then our on_changelog_event callback."""
    db = into.open(partition)
    for offset, (key, value) in enumerate(records):
        if value is None:
            db.delete(key)
        else:
            db.put(key, value)
        into.store.index_restored(partition, key, value)
        db.put(OFFSET_KEY, str(offset).encode())


def restore_in_bulk(
    into: Partitions, partition: int, records: list[Record], cuts: list[int]
) -> None:
    into.open(partition)
    bounds = [0, *sorted(set(cuts)), len(records)]
    for start, stop in itertools.pairwise(bounds):
        if start < stop:
            assert into.store.apply_restored(partition, records[start:stop], stop - 1)


def test_index_entry_is_the_id_key_and_due_time_of_a_due_key() -> None:
    assert index_entry(due_key(1_700_000_000_123, b"job-7")) == (
        id_key(b"job-7"),
        encode_due_ms(1_700_000_000_123),
    )


def test_replace_cancel_and_reschedule_in_one_batch_match_the_replay(
    two: tuple[Partitions, Partitions],
) -> None:
    # Given a changelog where job a is scheduled, replaced, cancelled and scheduled again at
    # its first due time, job b is scheduled, and the replay mark moves on
    records: list[Record] = [
        (due_key(10, b"a"), b"a@10"),
        (APPLIED_KEY, b"\0" * 8),
        (due_key(20, b"a"), b"a@20"),
        (due_key(10, b"a"), None),
        (due_key(5, b"b"), b"b@5"),
        (due_key(20, b"a"), None),
        (due_key(10, b"a"), b"a@10 again"),
        (APPLIED_KEY, b"\0" * 7 + b"\1"),
    ]
    replayed, bulk = two
    # When one database replays it record by record and the other takes it in one batch
    replay_like_faust(replayed, 0, records)
    restore_in_bulk(bulk, 0, records, [])
    # Then both hold the same keys, id index and persisted offset
    assert bulk.items(0) == replayed.items(0)
    assert bulk.items(0)[id_key(b"a")] == encode_due_ms(10)
    assert bulk.items(0)[OFFSET_KEY] == b"7"


def test_a_partition_that_is_not_open_is_not_written_nor_reopened(tmp_path: Path) -> None:
    # Given a partition whose database Faust dropped (revoked)
    partitions = Partitions(tmp_path)
    # When a restore would write it
    written = partitions.store.apply_restored(3, [(due_key(1, b"x"), b"x")], 0)
    # Then nothing happens: reopening would take the RocksDB lock from the next owner
    assert written is False
    assert partitions.dbs == {}


_job_ids = st.sampled_from([b"a", b"b", b"c"])
_dues = st.sampled_from([1, 2, 3])
_operations = st.lists(
    st.tuples(st.sampled_from(["put", "delete", "mark"]), _job_ids, _dues), max_size=40
)


@settings(max_examples=150, deadline=None)
@given(operations=_operations, cuts=st.lists(st.integers(0, 40), max_size=6))
def test_any_changelog_cut_anywhere_restores_like_the_replay(
    tmp_path_factory: pytest.TempPathFactory,
    operations: list[tuple[str, bytes, int]],
    cuts: list[int],
) -> None:
    # Given any changelog of due-key writes and deletes (also of keys never written) and marks
    records: list[Record] = []
    for operation, job_id, due in operations:
        if operation == "mark":
            records.append((APPLIED_KEY, encode_due_ms(len(records))))
        else:
            records.append((due_key(due, job_id), b"v" if operation == "put" else None))
    root = tmp_path_factory.mktemp("restore")
    replayed, bulk = Partitions(root / "replayed"), Partitions(root / "bulk")
    try:
        # When it is replayed record by record, and restored in batches cut anywhere
        replay_like_faust(replayed, 0, records)
        restore_in_bulk(bulk, 0, records, [c for c in cuts if c <= len(records)])
        # Then both databases are the same
        if records:
            assert bulk.items(0) == replayed.items(0)
    finally:
        replayed.close()
        bulk.close()


# --- the changelog queue through Faust's flow-control resumes ---------------------------------


def _queue_with(records: list[str]) -> tuple[Any, Any]:
    from mode.utils.queues import FlowControlEvent

    from app.upstream.recovery import ChangelogQueue

    flow = FlowControlEvent()
    queue = ChangelogQueue(maxsize=100, flow_control=flow, clear_on_resume=True)
    for record in records:
        queue.put_nowait(record)
    return flow, queue


async def test_a_rebalance_still_drops_the_queued_records_of_the_previous_generation() -> None:
    # Given changelog records queued when a rebalance suspends the flow
    flow, queue = _queue_with(["old-1", "old-2"])
    flow.suspend()
    # When the new generation's recovery resumes it
    flow.resume()
    # Then the stale records are gone (Faust re-reads from the offsets it seeks to)
    assert queue.empty()


async def test_the_resume_at_the_end_of_a_recovery_keeps_the_queued_standby_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from faust.tables.recovery import Recovery

    from app.upstream.recovery import BulkRecovery

    # Given standby records queued while Faust completes a recovery (which resumes the flow)
    flow, queue = _queue_with(["standby-1", "standby-2"])
    flags: list[bool] = []

    async def faust_completion(self: Any, generation_id: int = 0) -> None:
        flags.append(queue.keep_on_resume)
        flow.resume()

    monkeypatch.setattr(Recovery, "on_recovery_completed", faust_completion)
    recovery: Any = BulkRecovery.__new__(BulkRecovery)
    recovery.__dict__["tables"] = type("Tables", (), {"changelog_queue": queue})()
    # When the recovery completes
    await recovery.on_recovery_completed(7)
    # Then the records are still there for the standby, and later resumes clear again
    assert flags == [True]
    assert [queue.get_nowait(), queue.get_nowait()] == ["standby-1", "standby-2"]
    assert queue.keep_on_resume is False
