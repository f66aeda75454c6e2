"""The reconciliation table of a result (``python -m chaos.report FILE`` prints it again)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["table"]


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:,} ms"


def table(result: dict[str, Any]) -> str:
    f, load, late = result["figures"], result["load"], result["lateness"]
    cfg = result["config"]
    rows: list[tuple[str, str, str]] = [
        ("commands written to ingest", _n(f["commands"]), ""),
        (
            "  send rate achieved",
            f"{load['achieved_rate']:,.0f}/s",
            f"asked {load['asked_rate']:,.0f}/s; paused {load.get('throttled_s', 0):,.0f} s "
            f"while the workers' ingest lagged > {cfg.get('max_lag_s', 0):.0f} s; "
            f"{load['send_errors']} send errors",
        ),
        ("  schedules / cancels", f"{f['schedules']:,} / {f['cancels']:,}", ""),
        ("jobs scheduled (distinct ids)", _n(f["jobs_scheduled"]), ""),
        ("  replaced at least once", _n(f["jobs_replaced"]), ""),
        (
            "  cancelled (final state)",
            _n(f["jobs_cancelled"]),
            f"{f['jobs_cancelled_before_due']:,} of them before their due time",
        ),
        ("expected forwards (final = schedule)", _n(f["expected_forwards"]), ""),
        (
            "forwarded",
            _n(f["forwarded"]),
            f"{f['forward_records']:,} records read; {f.get('forward_records_read_again', 0):,}"
            f" read again in {f.get('forward_ranges_read_again', 0):,} ranges the reader skipped;"
            f" {f.get('missing_found_on_second_read', 0):,} found by a second full read",
        ),
        (
            "CANCELLED/REPLACED, ACKED BEFORE DUE, FORWARDED (must be 0)",
            _n(f.get("cancelled_or_replaced_acked_before_due_still_forwarded")),
            f"cancels {_n(f.get('cancelled_acked_before_due_still_forwarded'))}, replaces "
            f"(outdated value) {_n(f.get('replaced_acked_before_due_outdated_forwarded'))}; "
            "acknowledged by the broker before the due time",
        ),
        (
            "  races: acked at or after due, forwarded",
            f"{_n(f['cancel_races_forwarded'])} / {_n(f['replace_races_outdated_forwarded'])}",
            f"cancels / replaces; {_n(f.get('races_ack_unknown'))} of them with the ack unknown "
            "to the generator; not a failure",
        ),
        *_moved_rows(result),
        *_series_rows(result),
        (
            "NEVER FORWARDED (must be 0)",
            _n(f["never_forwarded"]),
            f"{f['never_forwarded_not_yet_read']:,} of them not yet read by the workers "
            f"when the run stopped; {f['never_forwarded_dead_lettered']} dead-lettered; "
            f"dead letters in all: {f['dead_letters']}",
        ),
        ("FORWARDED EARLY (must be 0)", _n(f["forwarded_early"]), ""),
        ("MISMATCHED FORWARDS (must be 0)", _n(f["mismatched_forwards"]), "no schedule matches"),
        (
            "duplicates",
            f"{f['duplicates']:,} ({f['duplicate_rate']:.3%})",
            "extra forwards of the same schedule (same job id and due)",
        ),
        (
            "  by time after the first forward",
            "",
            ", ".join(f"{k}: {v:,}" for k, v in f.get("duplicates_by_gap_to_first", {}).items()),
        ),
        (
            "  DUPLICATES UNDER ANOTHER JOB ID (must be 0)",
            _n(f["foreign_duplicates"]),
            "same value forwarded under a different delayq-job-id",
        ),
        (
            "lateness p50 / p99 / max (all jobs)",
            f"{_ms(late['p50_ms'])} / {_ms(late['p99_ms'])} / {_ms(late['max_ms'])}",
            "",
        ),
        (
            "max lateness outside disruption windows",
            _ms(late["outside_windows_max_ms"]),
            f"{late['outside_windows_jobs']:,} jobs; p99 {_ms(late['outside_windows_p99_ms'])}",
        ),
    ]
    for window in late["windows"]:
        rows.append(
            (
                f"  window: {window['event']} at {window['start_s']:.0f} s",
                _ms(window["max_lateness_ms"]),
                f"{window['note']}; recovered after {window['recovered_after_s']} s"
                + ("" if window["recovered"] else " (NOT recovered)")
                + f"; {window['jobs_due_in_window']:,} jobs due in it",
            )
        )
    lag = result.get("ingest_lag", {})
    rows.append(
        (
            "worst ingest lag (committed offsets)",
            f"~{lag.get('max_seconds_behind_approx', 0):.0f} s",
            f"{lag.get('max_records_behind', 0):,} records behind the generator (moved copies "
            "included)",
        )
    )
    w1 = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    lines = [f"{a:<{w1}}  {b:>{w2}}  {c}".rstrip() for a, b, c in rows]
    verdict = "PASS" if result["ok"] else "FAIL: " + ", ".join(result["failed"]) + " not 0"
    head = (
        f"chaos run {result['started']}: {cfg['workers']} workers, {cfg['partitions']} "
        f"partitions, {cfg['rate']:,.0f} commands/s asked for {cfg['duration_s']:.0f} s; "
        f"took {result['took_s']:.0f} s; stopped waiting: {f['stop_reason']}"
    )
    rule = "-" * max(len(line) for line in [head, *lines])
    notes = _notes(result)
    return "\n".join(
        [rule, head, rule, *lines, rule, *notes, verdict, f"logs: {result['run_dir']}"]
    )


def _moved_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Commands written off their job's home partition: moved, and mixed (none before they were
    reported)."""
    f, load = result["figures"], result["load"]
    if "commands_off_home" not in f:
        return []
    workers = result.get("worker_counters", {})
    hop = f["hop_ms"]
    through = ", ".join(f"{name} {n:,}" for name, n in load.get("by_partitioner", {}).items())
    return [
        (
            "written off their home partition (moved)",
            _n(f["commands_off_home"]),
            f"through {through or '-'}; {f['moved_copies']:,} moved copies in the ingest topic, "
            f"{f['moved_copies_skipped']:,} of them skipped (moved again); the workers' counters: "
            f"moved {_n(workers.get('moved'))}, moves_skipped {_n(workers.get('moves_skipped'))}"
            f" (over {_n(workers.get('worker_processes'))} worker processes)",
        ),
        (
            "  hop: acked, then at home p50 / p99 / max",
            f"{_ms(hop['p50'])} / {_ms(hop['p99'])} / {_ms(hop['max'])}",
            "from the command's acknowledgement to its copy's in the home partition (at most); "
            f"workers' move_lag_ms max {_ms(workers.get('move_lag_max_ms'))}",
        ),
        (
            "MOVED COMMANDS NEVER APPLIED (must be 0)",
            _n(f["moved_commands_never_applied"]),
            f"{_n(f.get('moved_never_applied_not_yet_read'))} of them not yet read by the workers "
            "when the run stopped; no copy the home partition applies",
        ),
        (
            "jobs written to several partitions (mixed)",
            _n(f["mixed_jobs"]),
            f"{_n(load.get('mixed_jobs'))} jobs sent replaces and cancels through another "
            f"partitioner ({_n(load.get('mixed_commands'))} commands); applied in the order they "
            f"reached the home partition; final state not the last acknowledged command's: "
            f"{f['mixed_outcome_changed']:,} jobs",
        ),
        (
            "  races (mixed partitioners, commands within 1 s)",
            _n(f["mixed_close_pairs"]),
            "pairs of one job's commands written to different partitions and acknowledged less "
            f"than 1 s apart; {f['mixed_reordered_within_1s']:,} of them applied in the other "
            "order; not a failure",
        ),
        (
            "  applied in the other order, further apart",
            _n(f["mixed_reordered_further_apart"]),
            f"widest gap between the acknowledgements {_ms(f['mixed_reordered_max_gap_ms'])} "
            "(a hop that long); not a failure",
        ),
    ]


def _series_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Recurring jobs: their series and occurrences (none before they were reported)."""
    f, load = result["figures"], result["load"]
    if "series" not in f:
        return []
    late = f["occurrence_lateness_ms"]
    return [
        (
            "recurring series (delayq-every-ms)",
            _n(f["series"]),
            f"{_n(f['series_jobs'])} job ids; {_n(f['series_with_until'])} with "
            f"delayq-until-ms; {_n(f['series_cancelled'])} ended by a cancel, "
            f"{_n(f['series_replaced'])} by a replace (load: {_n(load.get('series'))} started, "
            f"{_n(load.get('series_cancels'))} cancels, {_n(load.get('series_replaces'))} "
            "replaces)",
        ),
        (
            "  occurrences expected / forwarded",
            f"{_n(f['occurrences_expected'])} / {_n(f['occurrences_forwarded'])}",
            "from each series' first occurrence to its end: its until, the cancel or replace "
            "acknowledged, or when the ingest was read; "
            f"{_n(f['occurrence_forward_records'])} occurrence records read; "
            f"{_n(f['series_behind_at_stop'])} series not caught up when the run stopped waiting",
        ),
        (
            "  never forwarded / skipped and counted",
            f"{_n(f['occurrences_never_forwarded'])} / {_n(f['occurrences_skipped_by_workers'])}",
            "delayq forwards the latest occurrence due after a stall and counts the ones before "
            "it (the workers' occurrences_skipped, added up)",
        ),
        (
            "  OCCURRENCES MISSING BEYOND THE COUNTED SKIPS (must be 0)",
            _n(f["occurrences_missing_beyond_skipped"]),
            "never forwarded, less the workers' occurrences_skipped",
        ),
        (
            "  cut off by a cancel or replace",
            _n(f["occurrences_cut_off"]),
            "due before it was acknowledged, after the series' last forward; the earliest "
            f"{_ms(f['occurrences_cut_off_max_ms'])} before it; not a failure",
        ),
        ("  OCCURRENCES FORWARDED EARLY (must be 0)", _n(f["occurrences_forwarded_early"]), ""),
        (
            "  OCCURRENCES AFTER A CANCEL/REPLACE ACKED BEFORE DUE (must be 0)",
            _n(f["occurrences_after_cancel_or_replace_acked_before_due"]),
            f"cancels {_n(f['occurrences_after_cancel_acked_before_due'])}, replaces "
            f"{_n(f['occurrences_after_replace_acked_before_due'])}; races with the ack unknown "
            f"to the generator: {_n(f['occurrence_races_ack_unknown'])}",
        ),
        (
            "  occurrence duplicates",
            _n(f["occurrence_duplicates"]),
            "further forwards of one occurrence (same job id and due time)",
        ),
        (
            "  occurrence lateness p50 / p99 / max",
            f"{_ms(late['p50'])} / {_ms(late['p99'])} / {_ms(late['max'])}",
            "first forward of each expected occurrence after its due time",
        ),
    ]


def _notes(result: dict[str, Any]) -> list[str]:
    """What the forensics found, the machine's load, and a few samples of each anomaly."""
    out = []
    load = result.get("load_average")
    if load:
        out.append(
            f"load average at start {load['start'][0]:.2f}, at end {load['end'][0]:.2f} "
            "(everything on this machine shares its cores)"
        )
    forensics = result.get("forensics")
    if forensics:
        sup = forensics.get("superseded_acked_before_due", {"causes": {}, "examples": {}})
        if sup["causes"]:
            out.append(
                "cancelled/replaced, acked before due, still forwarded, by cause (jobs changelog): "
                + ", ".join(f"{k}: {v:,}" for k, v in sorted(sup["causes"].items()))
            )
        dup = forensics["duplicated_schedules"]
        if dup["causes"]:
            out.append(
                "duplicated schedules, by cause (jobs changelog): "
                + ", ".join(f"{k}: {v:,}" for k, v in sorted(dup["causes"].items()))
            )
        for cause in ("replay", "same firing pass", "stale table", "unknown"):
            for example in sup["examples"].get(cause, [])[:2]:
                out.append(f"  {cause}: {json.dumps(example, default=str)[:600]}")
        for cause in ("removed, then forwarded",):
            for example in dup["examples"].get(cause, [])[:2]:
                out.append(f"  duplicate, {cause}: {json.dumps(example, default=str)[:600]}")
    for sample in result.get("never_forwarded_samples", [])[:3]:
        if sample.get("read_by_workers"):
            out += _lost(sample)
    for name, title in (
        ("never_forwarded_samples", "never forwarded"),
        ("early_samples", "forwarded early"),
        ("mismatched_samples", "mismatched"),
        ("foreign_duplicate_samples", "duplicate under another job id"),
        ("acked_before_due_samples", "cancelled/replaced, acked before due, forwarded"),
        ("moved_never_applied_samples", "moved command never applied"),
        ("occurrence_samples", "recurring occurrence"),
        ("series_never_forwarded_samples", "series with occurrences never forwarded"),
    ):
        for sample in result.get(name, [])[:5]:
            short = {k: v for k, v in sample.items() if k != "worker_logs_around"}
            out.append(f"{title}: {json.dumps(short, default=str)[:800]}")
    return out


def _lost(sample: dict[str, Any]) -> list[str]:
    """A never-forwarded job that the workers had read: its evidence, line by line."""
    head = {k: v for k, v in sample.items() if not isinstance(v, list) or k == "commands"}
    out = [f"LOST (read by the workers, never forwarded): {json.dumps(head, default=str)}"]
    for key in ("changelog (ms from due)", "ingest neighbours (offset: fate)"):
        out.append(f"  {key}:")
        out += [f"    {line}" for line in sample.get(key, [])] or ["    (none)"]
    out.append("  worker logs around it:")
    out += [f"    {line}" for line in sample.get("worker_logs_around", [])[:40]]
    return out


def main(argv: list[str]) -> int:
    for name in argv or ["chaos/results/latest.json"]:
        print(table(json.loads(Path(name).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
