"""app.ranges: partition numbers as the short text the warnings and the CLI print."""

from __future__ import annotations

import pytest

from app.ranges import ranges_text


@pytest.mark.parametrize(
    ("numbers", "text"),
    [
        ([], ""),
        ([5], "5"),
        ([0, 1, 2, 3, 6], "0-3, 6"),
        ([6, 3, 1, 2, 0], "0-3, 6"),
        ([0, 2, 4], "0, 2, 4"),
        ([7, 8], "7-8"),
    ],
)
def test_ranges_text(numbers: list[int], text: str) -> None:
    assert ranges_text(numbers) == text
