"""The processes of a chaos run: one embedded broker and a changing set of delayq workers.

Every process runs in its own session (process group) and is stopped by its group id, never by
name. :meth:`Cluster.close` stops everything that is still running (workers first, a paused broker
is resumed before it is stopped, so is a frozen worker); the run calls it on every way out, Ctrl-C
and errors included.

A worker is started exactly as in production and as the tests do, by :mod:`app.workerproc`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from app import tansu_compat
from app.embedded import EmbeddedBroker, free_port
from app.settings import Settings
from app.times import now_ms
from app.workerproc import DeploymentNames, WorkerProcess

__all__ = ["Broker", "Cluster", "Names", "Worker"]


@dataclass(frozen=True)
class Names(DeploymentNames):
    """Topic and group names of the run's delayq deployment."""

    prefix: str
    partitions: int
    targets: tuple[tuple[str, int], ...]  # (suffix, partitions)

    @property
    def changelog(self) -> str:
        return f"{self.app_id}-jobs-changelog"

    @property
    def target_topics(self) -> list[str]:
        return [f"{self.prefix}-{suffix}" for suffix, _n in self.targets]


class Broker(EmbeddedBroker):
    """The embedded Tansu broker (a free loopback port, never 9092), which can be paused
    (SIGSTOP) and resumed (SIGCONT)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP the broker's process group: it keeps its memory, answers nothing."""
        assert self.pid is not None
        self.paused = True
        os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.pid is not None and self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 10) -> None:
        self.resume()  # a stopped process would not act on SIGTERM
        super().stop(timeout)


def _worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """The settings a run gives each of its workers, over the deployment's names."""
    return {"DELAYQ_BROKER_KIND": "embedded", **env}


class Worker(WorkerProcess):
    """One ``faust -A app worker`` process; :meth:`start` again restarts it (same data dir).

    What the run does to it is marked in its log (:meth:`mark`).
    """

    def __init__(
        self, name: str, bootstrap: str, names: Names, data_dir: Path, log_path: Path, **env: str
    ) -> None:
        extra_env = _worker_env(env)
        super().__init__(bootstrap, names, data_dir, log_path, extra_env, label=f"worker {name}")
        self.name = name
        self.starts = 0
        self.frozen = False

    def start(self) -> Self:
        """Spawn the worker (a fresh web port each time: the old one may linger)."""
        self.web_port = free_port()
        self.starts += 1
        self.mark(f"start #{self.starts} (web port {self.web_port})")
        return super().start()

    def mark(self, text: str) -> None:
        """A line in the worker's log saying what the chaos run did to it, and when."""
        stamp = time.strftime("%H:%M:%S", time.localtime()) + f".{now_ms() % 1000:03d}"
        with self.log_path.open("ab") as log:
            log.write(f"=== chaos {stamp} ({now_ms()}): {self.name} {text} ===\n".encode())

    def health(self, timeout: float = 3.0) -> dict[str, Any]:
        """The worker's ``GET /health`` body (status "unreachable: ..." when it does not answer)."""
        return super().health(timeout)

    def freeze(self) -> None:
        """SIGSTOP the process group, as a long GC pause or a stalled VM would: it keeps its
        memory and connections but sends nothing, heartbeats included, until :meth:`thaw`."""
        self.frozen = True
        self.mark("SIGSTOP (frozen)")
        self.signal_group(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.frozen:
            self.signal_group(signal.SIGCONT)
            self.mark("SIGCONT (thawed)")
        self.frozen = False

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the process group (a clean leave), SIGKILL after ``timeout`` seconds."""
        self.thaw()  # a stopped process would not act on SIGTERM
        return super().stop(timeout)


class Cluster:
    """The broker and every worker of one run, with their data directories."""

    def __init__(self, names: Names, run_dir: Path, data_root: Path, **worker_env: str) -> None:
        self.names = names
        self.run_dir = run_dir
        self.data_root = data_root
        self.worker_env = worker_env
        self.broker = Broker()
        self.workers: list[Worker] = []

    def start_broker(self) -> None:
        self.broker.start()

    def new_worker(self) -> Worker:
        name = f"w{len(self.workers) + 1}"
        worker = Worker(
            name,
            self.broker.bootstrap,
            self.names,
            self.data_root / name,
            self.run_dir / f"{name}.log",
            **self.worker_env,
        )
        self.workers.append(worker)
        return worker

    def worker_settings(self) -> Settings:
        """The settings the run's workers start with: they inherit this process's ``DELAYQ_*``
        environment, with the run's own settings laid over it."""
        env = {**self.names.env(), **_worker_env(self.worker_env)}
        # Arguments override the environment, as the workers' own settings do theirs.
        fields: dict[str, Any] = {k.removeprefix("DELAYQ_").lower(): v for k, v in env.items()}
        return Settings(**fields)

    def worker_session_timeout_s(self) -> float:
        """The workers' consumer group session timeout: how long a silent one keeps its
        partitions. The default app/service.py picks on the embedded broker, unless set."""
        return self.worker_settings().session_timeout_s or tansu_compat.SESSION_TIMEOUT_S

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.running()]

    def coverage(self) -> tuple[bool, str]:
        """Whether every live worker is ready and the partitions are all active somewhere."""
        active: list[int] = []
        states = []
        for worker in self.live():
            body = worker.health()
            states.append(f"{worker.name}:{body.get('status')}")
            if body.get("status") != "ok":
                return False, " ".join(states)
            active.extend(body.get("active_partitions") or [])
        complete = sorted(active) == list(range(self.names.partitions))
        return complete and bool(active), " ".join(states)

    async def settled(self, timeout: float) -> bool:
        """Until :meth:`coverage` holds twice in a row (False if ``timeout`` ran out)."""
        deadline = time.monotonic() + timeout
        in_a_row = 0
        while time.monotonic() < deadline:
            ok, _ = await asyncio.to_thread(self.coverage)
            in_a_row = in_a_row + 1 if ok else 0
            if in_a_row >= 2:
                return True
            await asyncio.sleep(0.5)
        return False

    def close(self) -> None:
        """Stop every process this run started (idempotent); workers before the broker."""
        self.broker.resume()
        for worker in self.workers:
            worker.thaw()
        live = self.live()
        for worker in live:  # all at once: SIGTERM, then SIGKILL whoever is still there
            worker.mark("SIGTERM (end of run)")
            worker.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + 15.0
        for worker in live:
            assert worker.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            if worker.running():
                worker.mark("SIGKILL (did not stop in time)")
                worker.signal_group(signal.SIGKILL)
                worker.proc.wait()
        self.broker.stop()
        shutil.rmtree(self.data_root, ignore_errors=True)
