"""The figures a reconciliation gives, and the verdict on them.

Only what the :class:`~chaos.reconcile.Book` knows is here, so the verdict can be checked on
made-up records; the run adds what it learned elsewhere (dead letters, the reader's skips).
"""

from __future__ import annotations

from typing import Any

from app.metrics import quantile
from chaos.reconcile import BEFORE_DUE, RACE, Book

__all__ = [
    "MOVED_NEVER_APPLIED",
    "MUST_BE_ZERO",
    "OCCURRENCES_AFTER_END",
    "OCCURRENCES_EARLY",
    "OCCURRENCES_MISSING",
    "SUPERSEDED_ACKED_BEFORE_DUE",
    "book_figures",
    "failures",
]

#: Forwards of a schedule whose cancel or replace Kafka acknowledged before the due time:
#: delayq promises that such a command wins.
SUPERSEDED_ACKED_BEFORE_DUE = "cancelled_or_replaced_acked_before_due_still_forwarded"
#: Commands written off their job's home partition that no applied copy there carries.
MOVED_NEVER_APPLIED = "moved_commands_never_applied"
#: Recurring jobs (chaos/series.py): occurrences forwarded before their due time; forwarded
#: though due after the cancel or replace that ended their series was acknowledged; never
#: forwarded, beyond the missed occurrences the workers counted as skipped.
OCCURRENCES_EARLY = "occurrences_forwarded_early"
OCCURRENCES_AFTER_END = "occurrences_after_cancel_or_replace_acked_before_due"
OCCURRENCES_MISSING = "occurrences_missing_beyond_skipped"
MUST_BE_ZERO = (
    "never_forwarded",
    "forwarded_early",
    "mismatched_forwards",
    "foreign_duplicates",
    SUPERSEDED_ACKED_BEFORE_DUE,
    MOVED_NEVER_APPLIED,
    OCCURRENCES_EARLY,
    OCCURRENCES_AFTER_END,
    OCCURRENCES_MISSING,
)


def book_figures(book: Book, occurrences_skipped: int | None = None) -> dict[str, Any]:
    """The reconciliation's figures (the must-be-0 ones among them).

    ``occurrences_skipped``: the workers' ``occurrences_skipped`` counters added up (None: not
    known, taken as 0): occurrences never forwarded within it are missed ones delayq counted.
    """
    one_shot_forwards = book.forwards - book.occurrence_forwards
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
        **_moved_figures(book),
        "never_forwarded": len(book.missing),
        "forwarded_early": book.early_count,
        "mismatched_forwards": book.mismatched_count,
        "duplicates": book.duplicates,
        "duplicates_by_gap_to_first": book.duplicate_gaps,
        "duplicate_rate": book.duplicates / one_shot_forwards if one_shot_forwards else 0.0,
        "foreign_duplicates": book.foreign_count,
        **_series_figures(book, occurrences_skipped),
    }


def _series_figures(book: Book, skipped: int | None) -> dict[str, Any]:
    """Recurring jobs: their series, and every occurrence expected of them (chaos/series.py)."""
    tally, _samples = book.series_tally()
    after_end = book.occurrences_after_end
    ended = [series.ended_by for series in book.series.values()]
    return {
        "series": tally.series,
        "series_jobs": len({job_id for job_id, _index in book.series}),
        "series_with_until": sum(series.until is not None for series in book.series.values()),
        "series_cancelled": ended.count("cancel"),
        "series_replaced": ended.count("replace"),
        "series_horizon_ms": book.horizon,
        "series_behind_at_stop": len(book.series_behind),
        "occurrences_expected": tally.expected,
        "occurrences_forwarded": tally.forwarded,
        "occurrences_never_forwarded": tally.never_forwarded,
        "occurrences_skipped_by_workers": skipped,
        OCCURRENCES_MISSING: max(0, tally.never_forwarded - (skipped or 0)),
        "occurrences_cut_off": tally.cut_off,
        "occurrences_cut_off_max_ms": tally.max_cut_off_ms,
        "occurrence_duplicates": tally.duplicates,
        "occurrence_forward_records": book.occurrence_forwards,
        "occurrence_lateness_ms": tally.lateness(),
        OCCURRENCES_EARLY: book.occurrences_early,
        OCCURRENCES_AFTER_END: sum(after_end.values()),
        "occurrences_after_cancel_acked_before_due": after_end.get("cancel", 0),
        "occurrences_after_replace_acked_before_due": after_end.get("replace", 0),
        "occurrence_races_ack_unknown": book.occurrence_races_ack_unknown,
    }


def _moved_figures(book: Book) -> dict[str, Any]:
    """Commands written off their job's home partition, and jobs written to several."""
    hops = sorted(book.hops_ms)
    mixed = book.mixed
    return {
        "commands_off_home": book.off_home,
        "moved_copies": book.moved_copies,
        "moved_copies_skipped": book.moved_copies_skipped,
        MOVED_NEVER_APPLIED: len(book.never_applied),
        "hop_ms": {
            "p50": quantile(hops, 0.50),
            "p99": quantile(hops, 0.99),
            "max": hops[-1] if hops else None,
        },
        "mixed_jobs": mixed.jobs,
        "mixed_close_pairs": mixed.close_pairs,
        "mixed_reordered_within_1s": mixed.reordered_close,
        "mixed_reordered_further_apart": mixed.reordered_apart,
        "mixed_reordered_max_gap_ms": mixed.max_reordered_gap_ms,
        "mixed_outcome_changed": mixed.outcome_changed,
    }


def failures(figures: dict[str, Any]) -> list[str]:
    """The must-be-0 figures that are not 0: the run fails unless this is empty."""
    return [name for name in MUST_BE_ZERO if figures[name]]
