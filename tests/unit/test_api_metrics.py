"""The Prometheus collector: engine counters and lateness, in the text format."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from app.metrics import COUNTERS, Snapshot, quantile, registry_for, render


def scrape(snapshots: list[Snapshot]) -> list[dict[str, object]]:
    """Scrape once per snapshot through one registry; each scrape parsed by family name."""
    current: list[Snapshot] = []
    registry = registry_for(lambda: current[-1])
    out = []
    for snap in snapshots:
        current.append(snap)
        text = render(registry).decode()
        out.append({f.name: f for f in text_string_to_metric_families(text)})
    return out


def counters(**values: int) -> dict[str, int]:
    return {name: values.get(name, 0) for name in COUNTERS}


def test_quantiles_are_nearest_rank() -> None:
    data = list(range(1, 101))
    assert [quantile(data, q) for q in (0.5, 0.9, 0.99, 1.0)] == [50, 90, 99, 100]
    assert quantile([7], 0.5) == 7
    assert quantile([], 0.5) is None


def test_counters_gauges_and_the_lateness_summary() -> None:
    # Given an engine that fired 3 jobs, then 2 more, with one pending job 1.5 s overdue
    first = Snapshot(counters(scheduled=5, fired=3), [10, 20, 30], True, 2, 2, 1_500)
    second = Snapshot(counters(scheduled=5, fired=5), [10, 20, 30, 40, 1000], True, 2, 0, 0)
    before, after = scrape([first, second])
    # Then each counter is a delayq_*_total counter
    for name in COUNTERS:
        family = before[f"delayq_{name}"]
        assert family.type == "counter"
        assert family.samples[0].name == f"delayq_{name}_total"
    assert before["delayq_fired"].samples[0].value == 3
    assert before["delayq_pending_jobs"].samples[0].value == 2
    assert before["delayq_oldest_overdue_seconds"].samples[0].value == 1.5
    # And the summary counts every forward and sums each lateness once, across scrapes
    samples = {
        (s.name, s.labels.get("quantile")): s.value
        for s in after["delayq_forward_lateness_seconds"].samples
    }
    assert samples[("delayq_forward_lateness_seconds_count", None)] == 5
    assert math.isclose(samples[("delayq_forward_lateness_seconds_sum", None)], 1.1)
    assert samples[("delayq_forward_lateness_seconds", "0.5")] == 0.03
    assert samples[("delayq_forward_lateness_seconds", "0.99")] == 1.0


def test_while_not_ready_only_counters_are_exported() -> None:
    (families,) = scrape([Snapshot(counters(), [], False, 0)])
    assert families["delayq_ready"].samples[0].value == 0
    assert "delayq_pending_jobs" not in families
    assert "delayq_oldest_overdue_seconds" not in families
    summary = families["delayq_forward_lateness_seconds"]
    assert all(math.isnan(s.value) for s in summary.samples if "quantile" in s.labels)
