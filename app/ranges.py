"""Partition numbers as short text: ``[0, 1, 2, 3, 6]`` as ``0-3, 6`` (no Faust needed)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ranges_text"]


def ranges_text(numbers: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 6]`` as ``0-3, 6`` (empty: "")."""
    spans: list[list[int]] = []
    for number in sorted(numbers):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)
