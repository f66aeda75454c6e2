"""``python -m bench [--quick] [--scenarios steady,recurring,throughput,burst,capacity,recovery]``.

Starts one embedded broker on a free port, runs the scenarios in that order against the
contenders, prints progress lines and then one table, and writes ``<out>/<mode>.json``,
``<out>/<mode>.png`` and the "Latest <mode> run" section of ``bench/README.md``. Every process
it starts is stopped on the way out, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report
from bench.broker import Broker
from bench.contenders import Delayq, Env
from bench.durability import capacity, recovery
from bench.load import Generator
from bench.recurring import recurring
from bench.scenarios import Runner, burst, session, steady, throughput
from bench.workers import stop_all

SCENARIOS = ("steady", "recurring", "throughput", "burst", "capacity", "recovery")


@dataclass(frozen=True)
class Plan:
    """The sizes of one mode's scenarios."""

    steady_rate: float
    steady_s: float
    steady_parallel: bool
    steady_contenders: tuple[str, ...]
    #: Series every second at ``steady_rate`` occurrences/s for ``steady_s`` (bench/recurring.py).
    recurring_contenders: tuple[str, ...]
    tp_contenders: tuple[str, ...]
    tp_start: float
    tp_step_s: float
    tp_bisections: int
    tp_max_steps: int
    drain_count: int
    burst_count: int
    burst_contenders: tuple[str, ...]
    capacity_sizes: tuple[int, ...]
    failover: bool
    recovery_timeout_s: float


FULL = Plan(
    steady_rate=1_000,
    steady_s=60,
    steady_parallel=False,
    steady_contenders=("limit", "seed", "delayq", "delayq/fnv1a"),
    recurring_contenders=("delayq",),
    tp_contenders=("limit", "seed", "delayq", "delayq-2w"),
    tp_start=500,
    tp_step_s=20,
    tp_bisections=3,
    tp_max_steps=10,
    drain_count=100_000,
    burst_count=100_000,
    burst_contenders=("limit", "seed", "delayq"),
    capacity_sizes=(10_000, 100_000, 1_000_000),
    failover=True,
    recovery_timeout_s=1_200,
)
QUICK = Plan(
    steady_rate=500,
    steady_s=15,
    steady_parallel=True,
    steady_contenders=("limit", "seed", "delayq"),
    recurring_contenders=("delayq",),
    tp_contenders=("limit", "delayq"),
    tp_start=1_000,
    tp_step_s=5,
    tp_bisections=0,
    tp_max_steps=3,
    drain_count=20_000,
    burst_count=10_000,
    burst_contenders=("limit", "seed", "delayq"),
    capacity_sizes=(10_000, 60_000),
    failover=False,
    recovery_timeout_s=300,
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="limit, seed and delayq on one embedded broker: one table, JSON, PNG",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes (bench/README.md, 'How long')"
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated, any of {','.join(SCENARIOS)} (default: all; "
        f"--quick: all but throughput)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory")
    parser.add_argument(
        "--contenders",
        default=None,
        help="comma-separated, of limit,seed,delayq,delayq-2w,delayq/fnv1a,delayq/crc32,"
        "delayq@DIR: /fnv1a, /crc32: the producer partitions as sarama's default, librdkafka's "
        "(the worker moves the commands to their home); DIR: another checkout, e.g. a git "
        "worktree of the commit before. The contenders of steady, throughput and burst, and "
        "the delayq ones of recurring (default: each scenario's own list)",
    )
    parser.add_argument("--partitions", type=int, default=8, help="partitions of every topic")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one size of the mode's plan, e.g. --set capacity_sizes=10000,50000 "
        "--set burst_count=20000 --set failover=true (fields: see Plan in bench/__main__.py)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="SVG",
        help="py-spy flame graph of the delayq worker for 20 s from its burst's due time",
    )
    parser.add_argument("--note", default="", help="a remark shown with the table and saved")
    parser.add_argument("--no-readme", action="store_true", help="do not update bench/README.md")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    args = parser.parse_args(argv)
    if args.scenarios is None:
        args.scenarios = ",".join(s for s in SCENARIOS if not (args.quick and s == "throughput"))
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    return args


async def _guarded(
    results: dict[str, Any], name: str, run: Callable[[], Awaitable[dict[str, Any]]]
) -> None:
    """Run one scenario; a failure is recorded and the next scenario still runs."""
    try:
        results[name] = await run()
    except Exception as exc:
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}


class _Brokers:
    """The run's embedded broker, replaced by a new one before each contender session."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.current: Broker | None = None
        self._log = log
        self.started = 0

    def new(self) -> str:
        """Stop the current broker (if any), start a new one, return its bootstrap address."""
        self.stop()
        broker = Broker()
        broker.start()
        self.current = broker
        self.started += 1
        self._log(f"bench: broker {broker.bootstrap} (pid {broker.pid})")
        return broker.bootstrap

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


async def _run(
    env: Env,
    plan: Plan,
    scenarios: list[str],
    results: dict[str, Any],
    profile: Path | None,
    brokers: _Brokers,
) -> None:
    gen = Generator(env.bootstrap)
    await gen.start()
    r = Runner(
        env,
        gen,
        profile=profile,
        new_broker=lambda: asyncio.to_thread(brokers.new),
        broker_pid=lambda: brokers.current.pid if brokers.current is not None else None,
    )
    try:
        if "steady" in scenarios:
            await _guarded(
                results,
                "steady",
                lambda: steady(
                    r,
                    plan.steady_contenders,
                    plan.steady_rate,
                    plan.steady_s,
                    parallel=plan.steady_parallel,
                ),
            )
        if "recurring" in scenarios:
            await _guarded(
                results,
                "recurring",
                lambda: recurring(r, plan.recurring_contenders, plan.steady_rate, plan.steady_s),
            )
        if "throughput" in scenarios:
            await _guarded(
                results,
                "throughput",
                lambda: throughput(
                    r,
                    plan.tp_contenders,
                    plan.tp_start,
                    plan.tp_step_s,
                    plan.tp_bisections,
                    plan.drain_count,
                    plan.tp_max_steps,
                ),
            )
        if "burst" in scenarios:
            await _guarded(
                results, "burst", lambda: burst(r, plan.burst_contenders, plan.burst_count)
            )
        if "capacity" in scenarios or "recovery" in scenarios:
            await _durability(r, plan, scenarios, results)
    finally:
        await r.gen.stop()


async def _durability(r: Runner, plan: Plan, scenarios: list[str], results: dict[str, Any]) -> None:
    """Capacity fills one worker; recovery then kills and restarts that worker."""
    sizes = list(plan.capacity_sizes)
    if "capacity" not in scenarios:
        sizes = sizes[-1:]  # recovery alone still needs the largest pending count
    try:
        async with session(r, "delayq", r.tag("du")) as (c, collector):
            assert isinstance(c, Delayq)
            cap = await capacity(r, c, sizes)
            if "capacity" in scenarios:
                results["capacity"] = cap
            if "recovery" in scenarios:
                await _guarded(
                    results,
                    "recovery",
                    lambda: recovery(
                        r, c, collector, cap["pending"], plan.failover, plan.recovery_timeout_s
                    ),
                )
    except Exception as exc:
        traceback.print_exc()
        error = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
        for name in ("capacity", "recovery"):
            if name in scenarios:
                results.setdefault(name, error)


def _only(plan: Plan, names: list[str]) -> Plan:
    """``plan`` with ``names`` as the contenders of steady, throughput and burst, and its delayq
    ones as recurring's (the others have no recurring jobs)."""
    chosen = tuple(names)
    delayqs = tuple(name for name in chosen if name.startswith("delayq"))
    return replace(
        plan,
        steady_contenders=chosen,
        recurring_contenders=delayqs,
        tp_contenders=chosen,
        burst_contenders=chosen,
    )


def _overridden(plan: Plan, settings: list[str]) -> Plan:
    """``plan`` with ``FIELD=VALUE`` overrides (tuples: comma-separated; bools: true/false)."""
    changes: dict[str, Any] = {}
    for setting in settings:
        name, _, raw = setting.partition("=")
        current = getattr(plan, name.strip(), None)
        if current is None:
            raise SystemExit(f"bench: --set {setting}: no such field")
        if isinstance(current, bool):
            value: Any = raw.strip().lower() in {"1", "true", "yes"}
        elif isinstance(current, tuple):
            kind = type(current[0]) if current else str
            value = tuple(kind(v.strip()) for v in raw.split(",") if v.strip())
        else:
            value = type(current)(raw)
        changes[name.strip()] = value
    return replace(plan, **changes)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    plan = QUICK if args.quick else FULL
    if args.contenders:
        plan = _only(plan, [c.strip() for c in args.contenders.split(",")])
    plan = _overridden(plan, args.set)
    signal.signal(signal.SIGTERM, _on_sigterm)
    meta = report.machine()
    meta["mode"] = "quick" if args.quick else "full"
    meta["command"] = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    meta["plan"] = plan.__dict__
    if args.note:
        meta["note"] = args.note
    results: dict[str, Any] = {"meta": meta}
    workdir = Path(tempfile.mkdtemp(prefix="delayq-bench-"))
    brokers = _Brokers(lambda m: print(m, flush=True))
    started = time.monotonic()
    code = 0
    try:
        print(f"bench: scratch {workdir}", flush=True)
        env = Env(brokers.new(), workdir, args.partitions, lambda m: print(m, flush=True))
        asyncio.run(_run(env, plan, args.scenarios, results, args.profile, brokers))
    except KeyboardInterrupt:
        print("bench: interrupted, stopping everything", file=sys.stderr)
        code = 130
    finally:
        stop_all()
        brokers.stop()
        meta["brokers_started"] = brokers.started
        failed = code != 0 or '"error"' in json.dumps(results)
        if args.keep or failed:
            print(f"bench: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["duration_s"] = round(time.monotonic() - started, 1)
    meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if code:
        return code
    table = report.rows(results)
    print()
    print(report.header(meta))
    print(report.render_text(table))
    paths = report.write(results, args.out, readme=not args.no_readme)
    print("\n" + "\n".join(f"bench: wrote {p}" for p in paths.values()))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
