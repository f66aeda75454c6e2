"""``python -m chaos`` (``make chaos``): a bounded chaos run against delayq, then reconciliation.

Exit codes: 0 every must-be-0 figure is 0; 1 one is not (or the run failed); 2 bad options;
130 interrupted. Ctrl-C or SIGTERM stops the run and every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
import traceback
from dataclasses import replace
from pathlib import Path

from chaos.load import PARTITIONERS
from chaos.report import table
from chaos.run import EVENTS, ChaosConfig, run


def _events(spec: str) -> tuple[tuple[str, float], ...]:
    out = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, at = item.partition("@")
        try:
            out.append((name, float(at)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not EVENT@FRACTION") from None
    return tuple(out)


def _names(spec: str) -> tuple[str, ...]:
    return tuple(filter(None, (part.strip() for part in spec.split(","))))


def parse(argv: list[str] | None) -> ChaosConfig:
    d = ChaosConfig()
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=d.rate, help="commands/s (default %(default)s)")
    p.add_argument("--duration", type=float, default=d.duration_s, help="s of load (%(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="workers at start (%(default)s)")
    p.add_argument("--partitions", type=int, default=d.partitions, help="(%(default)s)")
    p.add_argument("--max-delay", type=float, default=d.max_delay_s, help="s (%(default)s)")
    default_events = ",".join(f"{n}@{f}" for n, f in d.events)
    p.add_argument(
        "--events",
        type=_events,
        default=d.events,
        help=f"EVENT@FRACTION of the duration, in order; events: {', '.join(EVENTS)} "
        f"(default {default_events}; '' for none)",
    )
    p.add_argument("--pause", type=float, default=d.pause_s, help="broker SIGSTOP s (%(default)s)")
    p.add_argument(
        "--freeze",
        type=float,
        default=d.freeze_s,
        help="worker SIGSTOP s (0: the longer of 3 session timeouts and 8 s; %(default)s)",
    )
    p.add_argument("--restart-after", type=float, default=d.restart_after_s, help="s (%(default)s)")
    p.add_argument("--grace", type=float, default=d.grace_s, help="s after last due (%(default)s)")
    p.add_argument("--max-minutes", type=float, default=d.max_total_s / 60, help="(%(default)s)")
    p.add_argument(
        "--max-lag",
        type=float,
        default=d.max_lag_s,
        help="pause the load while the workers' backlog is more than this many s of their "
        "recent pace (0: send at --rate whatever happens; default %(default)s)",
    )
    p.add_argument(
        "--partitioners",
        type=_names,
        default=d.partitioners,
        help="the producer partitioners the load mixes, per job id: "
        f"{', '.join(PARTITIONERS)} (default {','.join(d.partitioners)}; murmur2 alone: every "
        "command lands on its job's home partition)",
    )
    p.add_argument(
        "--mixed-share",
        type=float,
        default=d.mixed_share,
        help="share of jobs whose replaces and cancels go through another partitioner than "
        "their first schedule (%(default)s; needs two partitioners or more)",
    )
    p.add_argument(
        "--recurring-share",
        type=float,
        default=d.recurring_share,
        help="share of new jobs that are recurring: delayq-every-ms 1-5 s, some with "
        "delayq-until-ms, some cancelled or replaced later (%(default)s)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=d.out_dir, help="results dir (%(default)s)")
    a = p.parse_args(argv)
    cfg = replace(
        d,
        rate=a.rate,
        duration_s=a.duration,
        workers=a.workers,
        partitions=a.partitions,
        max_delay_s=a.max_delay,
        events=a.events,
        pause_s=a.pause,
        freeze_s=a.freeze,
        restart_after_s=a.restart_after,
        grace_s=a.grace,
        max_total_s=a.max_minutes * 60,
        max_lag_s=a.max_lag,
        seed=a.seed,
        partitioners=a.partitioners,
        mixed_share=a.mixed_share,
        recurring_share=a.recurring_share,
        out_dir=a.out,
        command=shlex.join(["python", "-m", "chaos", *(sys.argv[1:] if argv is None else argv)]),
    )
    try:
        cfg.check()
    except ValueError as exc:
        p.error(str(exc))
    return cfg


async def _main(cfg: ChaosConfig) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    result = await run(cfg)
    print(table(result), flush=True)
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    try:
        return asyncio.run(_main(cfg))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chaos: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("chaos: the run failed; every process it started was stopped", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
