"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.engine_harness import Harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    """The engine harness with partitions 0 and 1 open (test_engine.py opens its own)."""
    harness = Harness(tmp_path)
    harness.open_db(0)
    harness.open_db(1)
    yield harness
    harness.close()
