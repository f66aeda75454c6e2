"""A delayq worker as a subprocess, for the tests, the bench and the chaos run.

A worker is started exactly as in production: ``python -m faust -A app worker -l info`` with
``DELAYQ_*`` settings in its environment, its own data directory and web port, its output
appended to a log file. It is ready once it logs :data:`READY_LINE` (its first assignment is
recovered). Every process runs in its own session (process group) and is stopped by the group's
id, never by name: SIGTERM, then SIGKILL after a timeout.

Nothing here imports Faust: the worker is another process (``app/__init__.py`` loads Faust only
when ``app.app`` is used).
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from app.embedded import free_port
from app.errors import WorkerNotReady

__all__ = [
    "READY_LINE",
    "READY_TIMEOUT_S",
    "ROOT",
    "WORKER_COMMAND",
    "DeploymentNames",
    "GroupProcess",
    "WorkerProcess",
]

#: The repository root: the working directory of every process started here.
ROOT = Path(__file__).resolve().parent.parent
#: What a worker logs once its first assignment is recovered.
READY_LINE = "[^Worker]: Ready"
READY_TIMEOUT_S = 120.0
WORKER_COMMAND = (sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info")
#: The last line of a Python traceback: ``SomeError: ...``.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


class DeploymentNames:
    """Topic and group names of one delayq deployment, all derived from ``prefix``.

    A mixin for the callers' (data)classes, which declare ``prefix`` and ``partitions``.
    """

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
        """The worker settings that name this deployment."""
        return {
            "DELAYQ_APP_ID": self.app_id,
            "DELAYQ_INGEST_TOPIC": self.ingest,
            "DELAYQ_FIRED_TOPIC": self.fired,
            "DELAYQ_DEAD_LETTER_TOPIC": self.dead_letters,
            "DELAYQ_PARTITIONS": str(self.partitions),
        }


class GroupProcess:
    """A subprocess in its own session (process group), its output appended to ``log_path``.

    ``env`` is laid over this process's environment. :meth:`start` again starts it again.
    """

    def __init__(
        self, cmd: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.cmd = list(cmd)
        self.log_path = log_path
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        #: The working directory (a worker imports ``app`` from there first).
        self.cwd = ROOT
        self._log_offset = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> Self:
        # Output of earlier starts stays in the log; log_since_start() reads past it.
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stopping it stops its children too
            )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_since_start(self) -> str:
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_offset)
            return fh.read().decode(errors="replace")

    def output(self, limit: int = 3000) -> str:
        """What the process printed since its last start (the end of it)."""
        return self.log_since_start()[-limit:]

    def mark(self, text: str) -> None:
        """Called with what is done to the process ("SIGTERM", ...); a subclass may log it."""

    def signal_group(self, signum: int) -> None:
        """Signal the process group, while the process is ours (not yet reaped)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def kill(self) -> float:
        """SIGKILL the process group (no shutdown, no flush, no commit); the time.time() of it."""
        killed_at = time.time()
        if self.proc is not None and self.proc.poll() is None:
            self.mark("SIGKILL")
            self.signal_group(signal.SIGKILL)
            self.proc.wait()
        return killed_at

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group (a clean leave), SIGKILL after ``timeout`` seconds.

        The exit code, or None if the process was never started.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.mark("SIGTERM")
            self.signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.mark(f"did not stop within {timeout:.0f} s: SIGKILL")
                self.signal_group(signal.SIGKILL)
                self.proc.wait()
            self.mark(f"exited with code {self.proc.returncode}")
        return self.proc.returncode


class WorkerProcess(GroupProcess):
    """``python -m faust -A app worker`` of the deployment ``names`` on the broker ``bootstrap``.

    ``extra_env`` is laid over the worker's settings. The web port is chosen here; a subclass
    may choose another before each :meth:`start`.
    """

    def __init__(
        self,
        bootstrap: str,
        names: DeploymentNames,
        data_dir: Path,
        log_path: Path,
        extra_env: Mapping[str, str] | None = None,
        *,
        label: str = "delayq worker",
    ) -> None:
        super().__init__(WORKER_COMMAND, log_path)
        self.bootstrap = bootstrap
        self.names = names
        self.data_dir = data_dir
        self.extra_env = dict(extra_env or {})
        self.web_port = free_port()
        self.label = label

    def start(self) -> Self:
        # Built at each start: the web port and the extra settings may have changed.
        self.env = {
            **self.names.env(),
            "DELAYQ_BROKER_URL": f"kafka://{self.bootstrap}",
            "DELAYQ_DATA_DIR": str(self.data_dir),
            "DELAYQ_WEB_PORT": str(self.web_port),
            **self.extra_env,
        }
        return super().start()

    def _check_ready(self, deadline: float, timeout: float) -> bool:
        """Whether the worker has logged :data:`READY_LINE` since its start.

        :class:`WorkerNotReady` once it has exited, or ``deadline`` (time.monotonic()) has passed
        (``timeout`` is how long it was given, for the message).
        """
        if READY_LINE in self.log_since_start():
            return True
        if self.proc is not None and self.proc.poll() is not None:
            raise WorkerNotReady(
                f"{self.label} exited with code {self.proc.returncode} ({self._last_error()})"
                f"\n{self.output()}"
            )
        if time.monotonic() > deadline:
            raise WorkerNotReady(f"{self.label} not ready in {timeout:.0f}s:\n{self.output()}")
        return False

    def _last_error(self) -> str:
        """The exception line of a traceback in the log, else its last line."""
        lines = [line for line in self.output().splitlines() if line.strip()]
        errors = [line for line in lines if _EXCEPTION_LINE.match(line)]
        return (errors or lines or [""])[-1].strip()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> Self:
        """Block until the worker logs :data:`READY_LINE` (else :class:`WorkerNotReady`)."""
        deadline = time.monotonic() + timeout
        while not self._check_ready(deadline, timeout):
            time.sleep(0.05)
        return self

    async def await_ready(self, timeout: float = READY_TIMEOUT_S) -> Self:
        """:meth:`wait_ready` for asyncio code: the event loop runs on meanwhile."""
        deadline = time.monotonic() + timeout
        while not self._check_ready(deadline, timeout):
            await asyncio.sleep(0.1)
        return self

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        """The worker's ``GET /health`` body (status ok or recovering)."""
        return self.get_json("/health", timeout)

    def get_json(self, path: str, timeout: float = 5.0) -> dict[str, Any]:
        """The JSON body of ``GET path`` on the worker's web port.

        An HTTP error gives its body plus ``http_status``; no answer gives status
        "unreachable: ...".
        """
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
