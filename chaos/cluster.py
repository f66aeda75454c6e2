"""The processes of a chaos run: one embedded broker and a changing set of delayq workers.

Every process runs in its own session (process group) and is stopped by its group id, never by
name. :meth:`Cluster.close` stops everything that is still running (workers first, a paused broker
is resumed before it is stopped); the run calls it on every way out, Ctrl-C and errors included.

A worker is started exactly as in production and as ``tests/support.py`` does:
``python -m faust -A app worker -l info`` with ``DELAYQ_*`` settings, its own data directory and
web port; ready once it logs ``[^Worker]: Ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.embedded import EmbeddedBroker, free_port

__all__ = ["Broker", "Cluster", "Names", "Worker"]

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "[^Worker]: Ready"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Names:
    """Topic and group names of the run's delayq deployment."""

    prefix: str
    partitions: int
    targets: tuple[tuple[str, int], ...]  # (suffix, partitions)

    @property
    def app_id(self) -> str:
        return f"{self.prefix}-delayq"

    @property
    def ingest(self) -> str:
        return f"{self.prefix}-ingest"

    @property
    def fired(self) -> str:
        return f"{self.prefix}-fired"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}-dead-letters"

    @property
    def changelog(self) -> str:
        return f"{self.app_id}-jobs-changelog"

    @property
    def target_topics(self) -> list[str]:
        return [f"{self.prefix}-{suffix}" for suffix, _n in self.targets]

    def env(self) -> dict[str, str]:
        return {
            "DELAYQ_APP_ID": self.app_id,
            "DELAYQ_INGEST_TOPIC": self.ingest,
            "DELAYQ_FIRED_TOPIC": self.fired,
            "DELAYQ_DEAD_LETTER_TOPIC": self.dead_letters,
            "DELAYQ_PARTITIONS": str(self.partitions),
        }


class Broker:
    """The embedded Tansu broker, which can be paused (SIGSTOP) and resumed (SIGCONT)."""

    def __init__(self) -> None:
        self._broker = EmbeddedBroker()  # a free loopback port, never 9092
        self.paused = False

    @property
    def bootstrap(self) -> str:
        return self._broker.bootstrap

    @property
    def pid(self) -> int | None:
        return self._broker.pid

    def start(self) -> None:
        self._broker.start()

    def running(self) -> bool:
        return self._broker.running()

    def output(self) -> str:
        return self._broker.output()

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

    def stop(self) -> None:
        self.resume()  # a stopped process would not act on SIGTERM
        self._broker.stop()


class Worker:
    """One ``faust -A app worker`` process; :meth:`start` again restarts it (same data dir)."""

    def __init__(
        self, name: str, bootstrap: str, names: Names, data_dir: Path, log_path: Path, **env: str
    ) -> None:
        self.name = name
        self.bootstrap = bootstrap
        self.names = names
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_env = env
        self.web_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_offset = 0

    def start(self) -> Worker:
        """Spawn the worker (a fresh web port each time: the old one may linger)."""
        self.web_port = free_port()
        self.starts += 1
        env = {
            **os.environ,
            **self.names.env(),
            "DELAYQ_BROKER_URL": f"kafka://{self.bootstrap}",
            "DELAYQ_BROKER_KIND": "embedded",
            "DELAYQ_DATA_DIR": str(self.data_dir),
            "DELAYQ_WEB_PORT": str(self.web_port),
            **self.extra_env,
        }
        self.mark(f"start #{self.starts} (web port {self.web_port})")
        self._log_offset = self.log_path.stat().st_size
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def mark(self, text: str) -> None:
        """A line in the worker's log saying what the chaos run did to it, and when."""
        stamp = time.strftime("%H:%M:%S", time.localtime()) + f".{now_ms() % 1000:03d}"
        with self.log_path.open("ab") as log:
            log.write(f"=== chaos {stamp} ({now_ms()}): {self.name} {text} ===\n".encode())

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_since_start(self) -> str:
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_offset)
            return fh.read().decode(errors="replace")

    async def wait_ready(self, timeout: float = 120.0) -> Worker:
        """Until the worker logs that it is ready (its first assignment recovered)."""
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.log_since_start():
            if not self.running():
                tail = self.log_since_start()[-3000:]
                raise RuntimeError(f"worker {self.name} exited early:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} not ready in {timeout:.0f} s")
            await asyncio.sleep(0.1)
        return self

    def health(self, timeout: float = 3.0) -> dict[str, Any]:
        """The worker's ``GET /health`` body (status "unreachable: ..." when it does not answer)."""
        return self.get_json("/health", timeout)

    def get_json(self, path: str, timeout: float = 3.0) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.web_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                body = {"http_status": exc.code, **json.load(exc)}
            except ValueError:
                body = {"http_status": exc.code}
        except (OSError, ValueError) as exc:
            body = {"status": f"unreachable: {exc}"}
        return body

    def kill(self) -> None:
        """SIGKILL the process group: no shutdown, no flush, no commit."""
        if self.proc is not None and self.proc.poll() is None:
            self.mark("SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the process group (a clean leave), SIGKILL after ``timeout`` seconds."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.mark("SIGTERM")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.mark(f"did not stop within {timeout:.0f} s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.mark(f"exited with code {self.proc.returncode}")
        return self.proc.returncode

    def signal_group(self, signum: int) -> None:
        """Signal the worker's process group, while the process is ours (not yet reaped)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)


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
