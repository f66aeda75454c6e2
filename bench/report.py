"""Results out: the table (terminal and Markdown), the JSON file, the PNG, the README section.

``write`` puts ``<mode>.json`` and ``<mode>.png`` (mode = quick or full) in the output
directory and, unless told not to, replaces the "Latest <mode> run" section of
``bench/README.md`` with the table, the picture, the date, the machine and the commit.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["header", "machine", "plot", "render_markdown", "render_text", "rows", "write"]

ROOT = Path(__file__).resolve().parent.parent
README = Path(__file__).resolve().parent / "README.md"
COLUMNS = ("limit", "seed", "delayq", "delayq/fnv1a", "delayq/crc32", "delayq-2w")
DASH = "-"

Row = tuple[str, dict[str, str]]


# --- the machine and the commit ---------------------------------------------------------


def _git(*args: str) -> str:
    # Read-only: --no-optional-locks keeps `git status` from refreshing the index.
    cmd = ["git", "--no-optional-locks", "-C", str(ROOT), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> dict[str, Any]:
    """Where and on what the run happened."""
    cpu = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": _git("rev-parse", "--short=10", "HEAD") or "unknown",
        "uncommitted_changes": dirty,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# --- the table ----------------------------------------------------------------------------


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return DASH
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}{unit}"
    return f"{int(value):,}{unit}"


def _per(section: dict[str, Any], fmt: Callable[[dict[str, Any]], str]) -> dict[str, str]:
    return {name: fmt(res) for name, res in section.get("contenders", {}).items()}


def _lateness(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda res: _num(res.get(key)) if "p50_ms" in res else _error(res)


def _error(res: dict[str, Any]) -> str:
    return "error" if res.get("error") else DASH


def _throughput(res: dict[str, Any]) -> str:
    if "msgs_per_s" in res:
        return f"{_num(res['msgs_per_s'])} msg/s"
    if res.get("jobs_per_s") is None:
        lowest = min((s["rate"] for s in res.get("steps", [])), default=None)
        return f"< {_num(lowest)}" if lowest else _error(res)
    bound = " (load-bound)" if res.get("generator_bound") else ""
    return f"{_num(res['jobs_per_s'])}{bound}"


def _seconds(ms: Any) -> str:
    return DASH if ms is None else f"{ms / 1000:.1f}"


def _steady_rows(st: dict[str, Any]) -> list[Row]:
    side = "side by side" if st.get("parallel") else "one at a time"
    delays = "-".join(str(d // 1000) for d in st["delay_ms"])
    rate, secs = _num(st["rate"]), _num(st["duration_s"])
    title = f"steady: {rate} jobs/s for {secs} s, delays {delays} s ({side})"
    return [
        (title, {}),
        *_lateness_rows(st, "  delivered"),
        ("  CPU per job (ms)", _per(st, _cpu_per_job)),
        *_broker_cpu_rows(st),
        *_move_rows(st),
    ]


def _lateness_rows(section: dict[str, Any], delivered: str) -> list[Row]:
    """Lateness quantiles, early and delivered (labelled ``delivered``) per contender."""
    return [
        ("  lateness p50 (ms)", _per(section, _lateness("p50_ms"))),
        ("  lateness p99 (ms)", _per(section, _lateness("p99_ms"))),
        ("  lateness p99.9 (ms)", _per(section, _lateness("p999_ms"))),
        ("  lateness max (ms)", _per(section, _lateness("max_ms"))),
        ("  early", _per(section, lambda r: _num(r.get("early")))),
        (
            delivered,
            _per(section, lambda r: f"{_num(r.get('delivered'))}/{_num(r.get('expected'))}"),
        ),
    ]


def _broker_cpu_rows(st: dict[str, Any]) -> list[Row]:
    """The broker's CPU per job (one contender per broker only: steady one at a time)."""
    if not any("broker_cpu_ms_per_job" in res for res in st.get("contenders", {}).values()):
        return []
    cpu = _per(st, lambda r: _cpu_per_job({"cpu_ms_per_job": r.get("broker_cpu_ms_per_job")}))
    return [("  broker CPU per job (ms)", cpu)]


def _move_rows(st: dict[str, Any]) -> list[Row]:
    """delayq's moves to the home partition (only with a delayq contender)."""
    if not any("moved" in res for res in st.get("contenders", {}).values()):
        return []

    def moved(res: dict[str, Any]) -> str:
        if "moved" not in res:
            return DASH
        return f"{_num(res['moved'])} ({res['moved'] / max(1, res['expected']):.0%})"

    def lag_p99(res: dict[str, Any]) -> str:
        lags = [lag["p99"] for lag in res.get("move_lag_ms", []) if lag.get("p99") is not None]
        return _num(max(lags)) if lags and res.get("moved") else DASH

    return [
        ("  moved to home partition", _per(st, moved)),
        ("  move lag p99 (ms)", _per(st, lag_p99)),
    ]


def _cpu_per_job(res: dict[str, Any]) -> str:
    cpu = res.get("cpu_ms_per_job")
    return DASH if cpu is None else f"{cpu:.2f}"


def _recurring_rows(re_: dict[str, Any], steady: dict[str, Any] | None) -> list[Row]:
    """Series every second: an occurrence's lateness and CPU, beside a one-shot job's (steady,
    when it ran at the same rate)."""
    rate, secs = _num(re_["rate"]), _num(re_["duration_s"])
    title = (
        f"recurring: {_num(re_['series'])} series every {re_['every_ms'] / 1000:g} s for {secs} s "
        f"({rate} occurrences/s)"
    )

    def per_occurrence(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda res: _cpu_per_job({"cpu_ms_per_job": res.get(key)})

    out = [
        (title, {}),
        *_lateness_rows(re_, "  occurrences delivered"),
        ("  skipped (missed, counted)", _per(re_, lambda r: _num(r.get("occurrences_skipped")))),
        ("  CPU per occurrence (ms)", _per(re_, per_occurrence("cpu_ms_per_occurrence"))),
        (
            "  broker CPU per occurrence (ms)",
            _per(re_, per_occurrence("broker_cpu_ms_per_occurrence")),
        ),
    ]
    if steady is not None and steady.get("rate") == re_["rate"]:
        one_shot = steady.get("contenders", {})

        def ratio(name: str, res: dict[str, Any]) -> str:
            job = one_shot.get(name, {}).get("cpu_ms_per_job")
            occurrence = res.get("cpu_ms_per_occurrence")
            return f"{occurrence / job:.2f}" if job and occurrence is not None else DASH

        cells = {name: ratio(name, res) for name, res in re_.get("contenders", {}).items()}
        out.append(("  CPU per occurrence / per one-shot job (steady)", cells))
    return out


def _throughput_rows(tp: dict[str, Any]) -> list[Row]:
    ratio = _per(tp, lambda r: f"{r['ratio_to_limit']:.3f}" if r.get("ratio_to_limit") else DASH)
    if "limit" in ratio:
        ratio["limit"] = "1"
    paced = _per(tp, _paced)
    if "limit" in paced:
        paced["limit"] = _throughput(tp["contenders"]["limit"].get("paced", {}))
    return [
        (f"throughput: highest rate with p99 < {tp['p99_limit_ms']} ms", {}),
        ("  jobs/s (limit: msg/s)", _per(tp, _throughput)),
        ("  ratio to limit", ratio),
        ("  limit paced like the others: jobs/s, ratio", paced),
    ]


def _paced(res: dict[str, Any]) -> str:
    return f"{res['ratio_to_limit_paced']:.2f}" if res.get("ratio_to_limit_paced") else DASH


def _burst_rows(bu: dict[str, Any]) -> list[Row]:
    return [
        (f"burst: {_num(bu['count'])} jobs due in the same ms", {}),
        (
            "  last forwarded after (s)",
            _per(bu, lambda r: _seconds(r.get("last_forwarded_after_ms"))),
        ),
        ("  forwarded/s", _per(bu, lambda r: _num(r.get("rate_per_s")))),
        ("  delivered", _per(bu, lambda r: f"{_num(r.get('delivered'))}/{_num(r.get('count'))}")),
    ]


def _capacity_rows(cap: dict[str, Any]) -> list[Row]:
    out: list[Row] = [("capacity: worker RSS with pending jobs", {})]
    for row in cap.get("rows", []):
        if row["pending"] == 0:
            label = "  RSS idle (MiB)"
        else:
            label = f"  RSS at {_count(row['pending'])} pending (MiB)"
        rss = row.get("rss_bytes")
        out.append((label, {"delayq": DASH if rss is None else f"{rss / 2**20:.0f}"}))
    from_idle = _num(cap.get("growth_bytes_per_job"))
    out.append(("  growth per job from idle (B)", {"delayq": from_idle}))
    measured = [r for r in cap.get("rows", []) if "rss_bytes" in r]
    if len(measured) >= 2 and "growth_bytes_per_job" in measured[-1]:
        # The measure: between the last two sizes (100k -> 1M), start-up and caches aside.
        span = f"{_count(measured[-2]['pending'])} -> {_count(measured[-1]['pending'])}"
        growth = _num(measured[-1]["growth_bytes_per_job"])
        out.append((f"  growth per job, {span} (B)", {"delayq": growth}))
    filled = [r for r in cap.get("rows", []) if "ingest_per_s" in r]
    if filled:
        label = f"  ingest, filling to {_count(filled[-1]['pending'])} (jobs/s)"
        out.append((label, {"delayq": _num(round(filled[-1]["ingest_per_s"]))}))
    return out


def _count(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k" if n >= 1000 else str(n)


def _recovery_rows(rec: dict[str, Any]) -> list[Row]:
    out: list[Row] = [(f"recovery: SIGKILL with {_count(rec.get('pending', 0))} pending", {})]
    labels = {
        "kept": "  restart, data dir kept (s)",
        "wiped": "  restart, data dir wiped (s)",
        "failover": "  fail-over to standby (s)",
    }
    for key, label in labels.items():
        if key in rec:
            phase = rec[key]
            cell = "error" if "error" in phase else _seconds(phase.get("kill_to_all_firing_ms"))
            out.append((label, {"delayq": cell}))
    return out


def rows(results: dict[str, Any]) -> list[Row]:
    """The table: a title row per scenario, then one row per figure."""
    table: list[Row] = []
    builders: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
        "steady": _steady_rows,
        "recurring": lambda re_: _recurring_rows(re_, results.get("steady")),
        "throughput": _throughput_rows,
        "burst": _burst_rows,
        "capacity": _capacity_rows,
        "recovery": _recovery_rows,
    }
    for name, build in builders.items():
        section = results.get(name)
        if section is None:
            table.append((f"{name}: not run", {}))
            continue
        if "error" in section and len(section) == 1:
            table.append((f"{name}: failed ({section['error']})", {}))
            continue
        table.extend(build(section))
    return table


def _columns(table: list[Row]) -> list[str]:
    used = list(dict.fromkeys(name for _label, cells in table for name in cells))
    # Known contenders in their order, then others (e.g. delayq@<commit>) as they come.
    return [c for c in COLUMNS if c in used] + [c for c in used if c not in COLUMNS]


def render_text(table: list[Row]) -> str:
    columns = _columns(table)
    width = max((len(label) for label, cells in table if cells), default=20)
    cell = {c: max([len(c), *(len(cells.get(c, "")) for _l, cells in table)]) for c in columns}
    head = " " * width + "".join(f"  {c:>{cell[c]}}" for c in columns)
    lines = [head]
    for label, cells in table:
        if not cells:
            lines.append(label)
            continue
        values = "".join(f"  {cells.get(c, DASH):>{cell[c]}}" for c in columns)
        lines.append(f"{label:<{width}}{values}")
    return "\n".join(lines)


def render_markdown(table: list[Row]) -> str:
    columns = _columns(table)
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, cells in table:
        if not cells:
            lines.append(f"| **{label}** |" + " |" * len(columns))
        else:
            values = " | ".join(cells.get(c, DASH) for c in columns)
            lines.append(f"| {label.strip()} | {values} |")
    return "\n".join(lines)


# --- the picture --------------------------------------------------------------------------


Bars = dict[str, tuple[float, str]]  # contender -> (bar height, its label)


def _bars(results: dict[str, Any]) -> tuple[str, str, Bars]:
    """Throughput bars, or (without a throughput run) the burst's forwarded/s."""
    tp = results.get("throughput", {}).get("contenders", {})
    bars: Bars = {
        name: (res.get("msgs_per_s") or res.get("jobs_per_s") or 0, _throughput(res))
        for name, res in tp.items()
        if "msgs_per_s" in res or "jobs_per_s" in res
    }
    paced = tp.get("limit", {}).get("paced", {})
    if paced.get("jobs_per_s") and "limit" in bars:
        limit_bars: Bars = {
            "limit, backlog": bars.pop("limit"),
            "limit, paced": (paced["jobs_per_s"], _throughput(paced)),
        }
        bars = {**limit_bars, **bars}
    if bars:
        return "throughput (p99 < 100 ms)", "jobs/s (limit: msg/s)", bars
    burst = results.get("burst", {})
    rates: Bars = {
        n: (r["rate_per_s"], _num(r["rate_per_s"]))
        for n, r in burst.get("contenders", {}).items()
        if r.get("rate_per_s")
    }
    return f"burst of {burst.get('count', 0):,}: forwarded/s (no throughput run)", "jobs/s", rates


def plot(results: dict[str, Any], path: Path) -> bool:
    """Lateness CDF per contender (steady) and throughput bars, each panel only if it has
    something to draw; False if neither has."""
    steady = results.get("steady", {}).get("contenders", {})
    cdfs = {name: res["cdf"] for name, res in steady.items() if res.get("cdf")}
    recurring = results.get("recurring", {}).get("contenders", {})
    cdfs |= {f"{name}, recurring": res["cdf"] for name, res in recurring.items() if res.get("cdf")}
    bar_title, bar_label, bars = _bars(results)
    if not cdfs and not bars:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (1 if cdfs else 0) + (1 if bars else 0)
    fig, axes = plt.subplots(1, panels, figsize=(8 if panels == 1 else 12, 4.5), squeeze=False)
    left, right = axes[0][0], axes[0][-1]
    if cdfs:
        for name, points in cdfs.items():
            left.plot([max(v, 0.5) for _q, v in points], [q for q, _v in points], label=name)
        left.set_xscale("log")
        left.set_xlabel("lateness (ms, log; values below 0.5 ms drawn at 0.5)")
        left.set_ylabel("fraction of jobs (occurrences) forwarded")
        left.set_title("steady (and recurring): lateness CDF")
        left.grid(True, which="both", alpha=0.3)
        left.legend()
    if bars:
        names = list(bars)
        right.bar(names, [bars[n][0] for n in names], color="tab:blue")
        for i, name in enumerate(names):
            right.annotate(bars[name][1], (i, bars[name][0]), ha="center", va="bottom")
        right.set_ylabel(bar_label)
        right.set_title(bar_title)
    meta = results.get("meta", {})
    fig.suptitle(
        f"delayq bench ({meta.get('mode')}) {meta.get('date')}, {meta.get('cores')} cores, "
        f"commit {meta.get('commit')}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --- files ---------------------------------------------------------------------------------


def header(meta: dict[str, Any]) -> str:
    dirty = " with uncommitted changes" if meta.get("uncommitted_changes") else ""
    load = f", load average {meta['load_average_at_start'][0]} at start"
    if meta.get("load_average_at_end"):
        load += f", {meta['load_average_at_end'][0]} at end"
    note = f". {meta['note']}" if meta.get("note") else ""
    return (
        f"{meta['mode']} run, {meta['date']}, {meta['host']} ({meta['cpu']}, {meta['cores']} "
        f"cores, {meta['memory_gib']} GiB), Python {meta['python']}, commit "
        f"{meta['commit']}{dirty}, took {meta.get('duration_s', 0):.0f} s{load}{note}"
    )


def write(results: dict[str, Any], out_dir: Path, readme: bool) -> dict[str, Path]:
    """JSON, PNG and (optionally) the README section; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = results["meta"]["mode"]
    paths = {"json": out_dir / f"{mode}.json"}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n")
    png = out_dir / f"{mode}.png"
    if plot(results, png):
        paths["png"] = png
    if readme:
        _update_readme(results, paths)
        paths["readme"] = README
    return paths


def _update_readme(results: dict[str, Any], paths: dict[str, Path]) -> None:
    mode = results["meta"]["mode"]
    start, end = f"<!-- bench:{mode}:start -->", f"<!-- bench:{mode}:end -->"
    body = [start, "", header(results["meta"]) + ":", "", render_markdown(rows(results)), ""]
    if "png" in paths:
        rel = os.path.relpath(paths["png"], README.parent)
        body += [f"![{mode} run]({rel})", ""]
    body += [f"Command: `{results['meta']['command']}`", "", end]
    text = README.read_text() if README.exists() else ""
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: "\n".join(body), text)
    else:
        text = text.rstrip() + f"\n\n## Latest {mode} run\n\n" + "\n".join(body) + "\n"
    README.write_text(text)


if (
    __name__ == "__main__"
):  # re-render a saved result: python -m bench.report bench/results/quick.json
    saved = json.loads(Path(sys.argv[1]).read_text())
    print(render_text(rows(saved)))
