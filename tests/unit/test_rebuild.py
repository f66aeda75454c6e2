"""A table that got ahead of its changelog: commits stop, and the next start rebuilds it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tables.rebuild import MARKER, mark_for_rebuild, rebuild_if_marked, stop_for_rebuild


def _table_dir(tmp_path: Path) -> Path:
    """A table directory as Faust leaves it: one RocksDB directory per partition."""
    tabledir = tmp_path / "v1" / "tables"
    for partition in (0, 1):
        db = tabledir / f"jobs-{partition}.db"
        db.mkdir(parents=True)
        (db / "000001.sst").write_bytes(b"rows")
    return tabledir


def test_a_marked_table_directory_is_emptied_on_the_next_start(tmp_path: Path) -> None:
    # Given a table directory marked after a failed changelog write
    tabledir = _table_dir(tmp_path)
    mark_for_rebuild(tabledir, "a changelog write failed: KafkaTimeoutError()")
    # When the next start looks at it
    reason = rebuild_if_marked(tabledir)
    # Then every partition's database is gone, and so is the marker, which said why
    assert reason is not None and reason.endswith("a changelog write failed: KafkaTimeoutError()")
    assert list(tabledir.iterdir()) == []
    # And the start after that keeps what recovery wrote
    (tabledir / "jobs-0.db").mkdir()
    assert rebuild_if_marked(tabledir) is None
    assert [entry.name for entry in tabledir.iterdir()] == ["jobs-0.db"]


def test_an_unmarked_table_directory_is_left_alone(tmp_path: Path) -> None:
    # Given a table directory nobody marked
    tabledir = _table_dir(tmp_path)
    # When a start looks at it
    # Then nothing is removed
    assert rebuild_if_marked(tabledir) is None
    assert sorted(entry.name for entry in tabledir.iterdir()) == ["jobs-0.db", "jobs-1.db"]


class _App:
    """What stop_for_rebuild uses of a Faust app: its consumer, table directory and crash."""

    def __init__(self, tabledir: Path) -> None:
        self.refused: list[str] = []
        self.crashed: list[BaseException] = []
        self.consumer = SimpleNamespace(refuse_commits=self.refused.append)
        self.conf = SimpleNamespace(tabledir=str(tabledir))

    async def crash(self, exc: BaseException) -> None:
        self.crashed.append(exc)


async def test_a_failed_changelog_write_stops_commits_marks_the_table_and_crashes(
    tmp_path: Path,
) -> None:
    # Given a running app
    tabledir = _table_dir(tmp_path)
    app: Any = _App(tabledir)
    error = TimeoutError("changelog batch expired")
    # When the producer gave up on a changelog record
    stop_for_rebuild(app, "a changelog write failed", error)
    await asyncio.sleep(0)
    # Then offsets are no longer committed, the table is marked, and the app crashes
    assert app.refused == ["a changelog write failed"]
    assert (tabledir / MARKER).read_text().strip().endswith("a changelog write failed")
    assert app.crashed == [error]


def test_a_partition_that_died_with_unacknowledged_changes_is_restored_whole(
    tmp_path: Path,
) -> None:
    from rocksdict import Options, Rdict

    from tables.keys import UNACKED_KEY
    from tables.rebuild import remove_unacked_partitions

    # Given two partition databases: one marked as holding unacknowledged changes
    tables = tmp_path / "tables"
    for name, marked in (("jobs-0.db", True), ("jobs-1.db", False)):
        db = Rdict(str(tables / name), options=Options(raw_mode=True))
        db[b"D-job"] = b"v"
        if marked:
            db[UNACKED_KEY] = b""
        db.close()
    # When the worker starts
    removed = remove_unacked_partitions(tables)
    # Then the marked one is removed (recovery restores it from its changelog), the other kept
    assert removed == ["jobs-0.db"]
    assert not (tables / "jobs-0.db").exists()
    assert (tables / "jobs-1.db").exists()
