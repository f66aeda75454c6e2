"""Prometheus metrics of one worker, read from the engine at scrape time (``GET /metrics``).

Nothing is counted twice: the engine's own counters (``engine.stats``) are exported as they are
when Prometheus asks, through a custom collector on a private registry.

- ``delayq_<counter>_total``: scheduled, replaced, cancelled, cancel_unknown, fired, removed,
  forward_failures, dead_lettered (since the worker started);
- ``delayq_pending_jobs``, ``delayq_oldest_overdue_seconds``, ``delayq_ingest_guard_lag_seconds``:
  of this worker's active partitions (absent while it rebalances or recovers; ``delayq_ready``
  says which);
- ``delayq_forward_lateness_seconds``: a summary of forward time minus due time (minus the
  receipt time for a job that was past due when delayq received it: those are counted by
  ``delayq_arrived_past_due_total``, and only delayq's own delay is lateness). Quantiles are
  over the engine's window of recent forwards; ``_count`` is every forward, ``_sum`` is added up
  scrape by scrape from that window (estimated from the window's mean for forwards that left the
  window unseen, i.e. more than its size between two scrapes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE_LATEST",
    "COUNTERS",
    "EngineCollector",
    "Snapshot",
    "quantile",
    "registry_for",
    "render",
]

#: Engine counter -> help text.
COUNTERS: Mapping[str, str] = {
    "scheduled": "Schedule commands applied (new jobs and replacements).",
    "replaced": "Schedule commands that replaced a pending job with the same id.",
    "cancelled": "Pending jobs cancelled.",
    "cancel_unknown": "Cancel commands for a job that was not pending.",
    "fired": "Jobs forwarded to their target topic (acknowledged by the broker).",
    "removed": "Forwarded jobs removed from the table.",
    "forward_failures": "Failed forward attempts (retried, then dead-lettered).",
    "dead_lettered": "Records written to the dead-letter topic (bad commands, failed forwards).",
    "clock_skew_corrected": "Delays counted from receipt (the record was future-dated).",
    "replays_skipped": "Ingest commands delivered again after a crash and not applied twice.",
    "gaps_read_back": "Ingest commands the stream skipped, read back and applied.",
    "not_owned_skipped": "Records left to the new owner: read before a rebalance took them away.",
    "arrived_past_due": "Jobs already past due when delayq received them (late from receipt).",
    "ingest_probes": "End-offset probes of the ingest guard.",
    "guard_read_back": "Ingest commands read back for the ingest guard (not delivered).",
    "moved": "Commands moved from the partition they landed on to their job's home partition.",
    "moves_skipped": "Moved commands that reached their home again (after a crash): skipped.",
    "rescheduled": "Recurring jobs written again at their next occurrence after a forward.",
    "occurrences_skipped": "Missed occurrences of recurring jobs not sent: a later one was due.",
}
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape reads from the engine."""

    counters: Mapping[str, int]
    #: Lateness (ms) of the most recent forwards, oldest first.
    lateness_ms: Sequence[int]
    ready: bool
    active_partitions: int
    pending: int | None = None
    oldest_overdue_ms: int | None = None
    guard_lag_ms: int | None = None


def quantile(ordered: Sequence[int], q: float) -> int | None:
    """The nearest-rank ``q`` quantile of an ascending sequence (None when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class EngineCollector(Collector):
    """Turns a :class:`Snapshot` into metric families at each scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot
        self._seen_fired = 0
        self._lateness_sum_ms = 0.0

    def _add_new_lateness(self, fired: int, window: Sequence[int]) -> None:
        new = fired - self._seen_fired
        if new <= 0:
            return
        seen = list(window[-new:]) if window else []
        added = float(sum(seen))
        if seen and new > len(seen):  # more forwards than the window holds since the last scrape
            added += (new - len(seen)) * added / len(seen)
        self._lateness_sum_ms += added
        self._seen_fired = fired

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        for name, doc in COUNTERS.items():
            yield CounterMetricFamily(f"delayq_{name}", doc, value=snap.counters.get(name, 0))
        yield GaugeMetricFamily(
            "delayq_ready",
            "1 when the worker's tables are recovered and it fires jobs.",
            value=1 if snap.ready else 0,
        )
        yield GaugeMetricFamily(
            "delayq_active_partitions",
            "Partitions this worker owns as active.",
            value=snap.active_partitions,
        )
        if snap.pending is not None:
            yield GaugeMetricFamily(
                "delayq_pending_jobs",
                "Jobs waiting in this worker's active partitions.",
                value=snap.pending,
            )
        if snap.oldest_overdue_ms is not None:
            yield GaugeMetricFamily(
                "delayq_oldest_overdue_seconds",
                "Age of the oldest due job not yet forwarded (0: none).",
                value=snap.oldest_overdue_ms / 1000,
            )
        if snap.guard_lag_ms is not None:
            yield GaugeMetricFamily(
                "delayq_ingest_guard_lag_seconds",
                "How long the earliest due job held back by the ingest guard has waited "
                "for the commands acknowledged before its due time (0: none held).",
                value=snap.guard_lag_ms / 1000,
            )
        yield self._lateness(snap)

    def _lateness(self, snap: Snapshot) -> Metric:
        fired = snap.counters.get("fired", 0)
        self._add_new_lateness(fired, snap.lateness_ms)
        name = "delayq_forward_lateness_seconds"
        doc = "Forward time minus due time (or receipt, if later) of forwarded jobs."
        metric = Metric(name, doc, "summary")
        ordered = sorted(snap.lateness_ms)
        for q in QUANTILES:
            value = quantile(ordered, q)
            metric.add_sample(
                name, {"quantile": str(q)}, math.nan if value is None else value / 1000
            )
        metric.add_sample(f"{name}_count", {}, fired)
        metric.add_sample(f"{name}_sum", {}, self._lateness_sum_ms / 1000)
        return metric


def registry_for(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    """A private registry exporting only delayq's metrics (nothing of the process default)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(snapshot))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (:data:`CONTENT_TYPE_LATEST`)."""
    return generate_latest(registry)
