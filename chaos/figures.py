"""The figures a reconciliation gives, and the verdict on them.

Only what the :class:`~chaos.reconcile.Book` knows is here, so the verdict can be checked on
made-up records; the run adds what it learned elsewhere (dead letters, the reader's skips).
"""

from __future__ import annotations

from typing import Any

from chaos.reconcile import BEFORE_DUE, RACE, Book

__all__ = ["MUST_BE_ZERO", "SUPERSEDED_ACKED_BEFORE_DUE", "book_figures", "failures"]

#: Forwards of a schedule whose cancel or replace Kafka acknowledged before the due time:
#: delayq promises that such a command wins.
SUPERSEDED_ACKED_BEFORE_DUE = "cancelled_or_replaced_acked_before_due_still_forwarded"
MUST_BE_ZERO = (
    "never_forwarded",
    "forwarded_early",
    "mismatched_forwards",
    "foreign_duplicates",
    SUPERSEDED_ACKED_BEFORE_DUE,
)


def book_figures(book: Book) -> dict[str, Any]:
    """The reconciliation's figures (the must-be-0 ones among them)."""
    cancelled, cancelled_before_due = book.cancelled_jobs()
    superseded = book.superseded_counts()
    cancels_before_due = superseded.get(("cancel", BEFORE_DUE), 0)
    replaces_before_due = superseded.get(("replace", BEFORE_DUE), 0)
    return {
        "commands": book.ingest_records,
        "schedules": book.schedules,
        "cancels": book.cancels,
        "bad_ingest_records": book.bad_ingest,
        "jobs_scheduled": book.scheduled_jobs,
        "jobs_replaced": book.replaced_jobs(),
        "jobs_cancelled": cancelled,
        "jobs_cancelled_before_due": cancelled_before_due,
        "expected_forwards": len(book.expected),
        "forwarded": len(book.expected) - len(book.missing),
        "forward_records": book.forwards,
        SUPERSEDED_ACKED_BEFORE_DUE: cancels_before_due + replaces_before_due,
        "cancelled_acked_before_due_still_forwarded": cancels_before_due,
        "replaced_acked_before_due_outdated_forwarded": replaces_before_due,
        "cancel_races_forwarded": superseded.get(("cancel", RACE), 0),
        "replace_races_outdated_forwarded": superseded.get(("replace", RACE), 0),
        "races_ack_unknown": book.ack_unknown,
        "never_forwarded": len(book.missing),
        "forwarded_early": book.early_count,
        "mismatched_forwards": book.mismatched_count,
        "duplicates": book.duplicates,
        "duplicates_by_gap_to_first": book.duplicate_gaps,
        "duplicate_rate": book.duplicates / book.forwards if book.forwards else 0.0,
        "foreign_duplicates": book.foreign_count,
    }


def failures(figures: dict[str, Any]) -> list[str]:
    """The must-be-0 figures that are not 0: the run fails unless this is empty."""
    return [name for name in MUST_BE_ZERO if figures[name]]
