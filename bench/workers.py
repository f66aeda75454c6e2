"""Processes the bench starts: delayq workers and the limit/seed contender programs.

Every process runs in its own session (process group), is registered in :data:`REGISTRY` and
is stopped by its group id: SIGTERM, then SIGKILL. ``python -m bench`` calls
:func:`stop_all` on the way out, also after Ctrl-C or SIGTERM, so nothing outlives a run.

A delayq worker is started as in production and as the tests do, by :mod:`app.workerproc`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from app.workerproc import DeploymentNames, GroupProcess, WorkerProcess

__all__ = ["REGISTRY", "DelayqWorker", "Namespace", "Proc", "cpu_seconds", "rss_bytes", "stop_all"]

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


class Proc(GroupProcess):
    """A process in its own group, in :data:`REGISTRY` from its start until it is stopped."""

    def start(self) -> Self:
        super().start()
        REGISTRY.add(self)
        return self

    def kill(self) -> float:
        """SIGKILL the process group; the time.time() of the kill."""
        killed_at = super().kill()
        REGISTRY.discard(self)
        return killed_at

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds."""
        returncode = super().stop(timeout)
        if self.proc is not None:
            # Children that ignored the group signal (none expected) go with the group too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        REGISTRY.discard(self)
        return returncode


#: Every process started and not yet stopped.
REGISTRY: set[Proc] = set()


def stop_all(timeout: float = 10.0) -> None:
    """Stop every registered process (SIGTERM to all groups, then SIGKILL stragglers)."""
    procs = [p for p in REGISTRY if p.proc is not None]
    for p in procs:
        if p.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        assert p.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.proc.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        p.proc.wait()
    REGISTRY.clear()


def rss_bytes(pid: int) -> int:
    """Resident set size of one process."""
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass(frozen=True)
class Namespace(DeploymentNames):
    """Topic and group names of one delayq deployment (like tests/support.Namespace)."""

    prefix: str
    partitions: int


class DelayqWorker(WorkerProcess, Proc):
    """``python -m faust -A app worker`` with its own data directory and web port.

    A :class:`Proc` too: WorkerProcess's start() builds the worker's settings, then Proc's
    (next in the MRO) registers it.
    """

    def __init__(
        self, bootstrap: str, ns: Namespace, data_dir: Path, log_path: Path, **extra: str
    ) -> None:
        env = {"DELAYQ_BROKER_KIND": "embedded", **extra}
        super().__init__(bootstrap, ns, data_dir, log_path, env)
