"""Processes the bench starts: delayq workers and the limit/seed contender programs.

Every process runs in its own session (process group), is registered in :data:`REGISTRY` and
is stopped by its group id: SIGTERM, then SIGKILL. ``python -m bench`` calls
:func:`stop_all` on the way out, also after Ctrl-C or SIGTERM, so nothing outlives a run.

A delayq worker is started as in production and as ``tests/support.py`` does:
``python -m faust -A app worker -l info`` with ``DELAYQ_*`` settings from the environment, its
own data directory and web port, ready once it logs ``[^Worker]: Ready``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.embedded import free_port

__all__ = ["REGISTRY", "DelayqWorker", "Namespace", "Proc", "cpu_seconds", "rss_bytes", "stop_all"]

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "[^Worker]: Ready"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


class Proc:
    """A subprocess in its own process group, output appended to ``log_path``."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> Proc:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        REGISTRY.add(self)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self, limit: int = 3000) -> str:
        """What the process printed since its last start (the end of it)."""
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_offset)
            return fh.read().decode(errors="replace")[-limit:]

    def log_since_start(self) -> str:
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_offset)
            return fh.read().decode(errors="replace")

    def kill(self) -> float:
        """SIGKILL the process group; the time.time() of the kill."""
        killed_at = time.time()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        REGISTRY.discard(self)
        return killed_at

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            # Children that ignored the group signal (none expected) go with the group too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        REGISTRY.discard(self)


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
class Namespace:
    """Topic and group names of one delayq deployment (like tests/support.Namespace)."""

    prefix: str
    partitions: int

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

    def env(self) -> dict[str, str]:
        return {
            "DELAYQ_APP_ID": self.app_id,
            "DELAYQ_INGEST_TOPIC": self.ingest,
            "DELAYQ_FIRED_TOPIC": self.fired,
            "DELAYQ_DEAD_LETTER_TOPIC": self.dead_letters,
            "DELAYQ_PARTITIONS": str(self.partitions),
        }


class DelayqWorker(Proc):
    """``python -m faust -A app worker`` with its own data directory and web port."""

    def __init__(
        self, bootstrap: str, ns: Namespace, data_dir: Path, log_path: Path, **extra: str
    ) -> None:
        self.web_port = free_port()
        self.data_dir = data_dir
        env = {
            **ns.env(),
            "DELAYQ_BROKER_URL": f"kafka://{bootstrap}",
            "DELAYQ_BROKER_KIND": "embedded",
            "DELAYQ_DATA_DIR": str(data_dir),
            "DELAYQ_WEB_PORT": str(self.web_port),
            **extra,
        }
        cmd = [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"]
        super().__init__(cmd, log_path, env)

    def wait_ready(self, timeout: float = 120.0) -> DelayqWorker:
        """Block until the worker logs that it is ready (its first assignment recovered)."""
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.log_since_start():
            if not self.running():
                assert self.proc is not None
                lines = [ln for ln in self.output().splitlines() if ln.strip()]
                last = lines[-1].strip() if lines else ""
                for line in reversed(lines):  # the exception, if the log has a traceback
                    if _EXCEPTION_LINE.match(line):
                        last = line.strip()
                        break
                raise RuntimeError(
                    f"delayq worker exited with code {self.proc.returncode} ({last})"
                    f"\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"delayq worker not ready in {timeout:.0f}s:\n{self.output()}")
            time.sleep(0.05)
        return self

    def health(self) -> dict[str, Any]:
        """The worker's ``GET /health`` body (status "unreachable: ..." if it does not answer)."""
        url = f"http://127.0.0.1:{self.web_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        except (OSError, ValueError) as exc:
            body = {"status": f"unreachable: {exc}"}
        return body
