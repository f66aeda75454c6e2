"""``make run`` and ``make worker`` (``python -m app.embedded run|worker``) as a newcomer uses them.

Each command runs as a real process on its own ports; nothing is mocked. ``run`` starts its own
embedded broker; ``worker`` joins the session's broker and a worker started by the fixtures.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.embedded import EmbeddedBroker, free_port, port_open
from app.workerproc import GroupProcess
from tests.conftest import WorkerFactory
from tests.support import ROOT, Namespace, wait_for

pytestmark = pytest.mark.integration

EMBEDDED = [sys.executable, "-m", "app.embedded"]
READY = "delayq is ready"
JOINED = "delayq worker joined"


def _clean_env(**env: str) -> dict[str, str]:
    """This environment without any ``DELAYQ_*`` setting, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DELAYQ_")}
    return {**base, **env}


def _embedded(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EMBEDDED, command],
        cwd=ROOT,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=90,
    )


class _Command(GroupProcess):
    """A long-running ``python -m app.embedded COMMAND`` (its own process group)."""

    def __init__(self, command: str, log_path: Path, **env: str) -> None:
        super().__init__([*EMBEDDED, command], log_path, env)

    def printed(self, text: str) -> bool:
        return text in self.log_since_start()


@pytest.fixture
def commands() -> Iterator[list[_Command]]:
    """Commands a test starts, stopped (SIGTERM: worker, then broker) after it."""
    started: list[_Command] = []
    yield started
    for command in started:
        command.stop(timeout=30)


def _start_run(tmp_path: Path, commands: list[_Command]) -> tuple[_Command, int, int]:
    """``make run`` started on free web and broker ports: ``(run, web_port, broker_port)``."""
    web_port, broker_port = free_port(), free_port()
    run = _Command(
        "run",
        tmp_path / "run.log",
        DELAYQ_WEB_PORT=str(web_port),
        DELAYQ_EMBEDDED_PORT=str(broker_port),
    )
    commands.append(run.start())
    return run, web_port, broker_port


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: dict[str, Any] = json.load(response)
            return body
    except (OSError, ValueError):
        return {}


# --- make run: a busy web port ------------------------------------------------------------------


def test_run_with_its_web_port_taken_says_so_in_one_line_and_starts_nothing() -> None:
    # Given something listening on the web port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        web_port = busy.getsockname()[1]
        broker_port = free_port()
        # When make run starts with that port
        done = _embedded(
            "run", DELAYQ_WEB_PORT=str(web_port), DELAYQ_EMBEDDED_PORT=str(broker_port)
        )
    # Then it exits non-zero with one line naming the port and the variable to change
    assert done.returncode == 2, done
    assert READY not in done.stdout
    assert done.stderr.splitlines() == [
        f"delayq: web port {web_port} is already in use (another worker?); "
        "set DELAYQ_WEB_PORT to use another port"
    ]
    assert not port_open("127.0.0.1", broker_port), "no broker was started"


class _Impostor(BaseHTTPRequestHandler):
    """Another program's web server: 200 on every GET, as a ready delayq worker would."""

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "active_partitions": [0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_run_is_ready_only_when_its_own_worker_answers(
    tmp_path: Path, commands: list[_Command]
) -> None:
    run, web_port, broker_port = _start_run(tmp_path, commands)
    # Given another server that takes the web port after make run checked it (its broker is up,
    # its worker still starting) and answers 200 on /health
    wait_for(lambda: port_open("127.0.0.1", broker_port) or not run.running(), "the broker")
    impostor = ThreadingHTTPServer(("127.0.0.1", web_port), _Impostor)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    try:
        # When the worker fails to bind it, Then make run ends without calling itself ready
        wait_for(lambda: not run.running(), "make run to end")
        assert run.proc is not None and run.proc.returncode != 0
        assert not run.printed(READY), run.output()
        assert run.printed("delayq: worker exited with code")
    finally:
        impostor.shutdown()
        impostor.server_close()


# --- make run: the banner -----------------------------------------------------------------------


def _banner_command(banner: str, marker: str) -> list[str]:
    """The command of the banner's line containing ``marker`` (continuation lines joined)."""
    text = banner.replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if marker in line]
    return shlex.split(line[line.index(".venv/bin/") :])


def _run_as_printed(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A banner command from the repository root, with no DELAYQ_* setting to help it."""
    return subprocess.run(
        argv, cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60
    )


def test_runs_banner_names_the_dashboard_and_commands_that_work_with_the_ports_in_force(
    tmp_path: Path, commands: list[_Command]
) -> None:
    # Given make run on ports other than the defaults
    run, web_port, broker_port = _start_run(tmp_path, commands)
    # When it is ready
    wait_for(lambda: run.printed(READY) or not run.running(), "make run's banner")
    log = run.log_since_start()
    banner = log[log.index(READY) :]
    web, bootstrap = f"http://127.0.0.1:{web_port}", f"127.0.0.1:{broker_port}"
    # Then it names the dashboard, which answers, and the way to watch the target topic
    assert f"dashboard {web}/ " in banner
    with urllib.request.urlopen(f"{web}/", timeout=5) as page:
        assert page.status == 200
    assert _banner_command(banner, "delayq tail") == [
        ".venv/bin/delayq",
        "tail",
        "--bootstrap",
        bootstrap,
        "demo-out",
    ]
    assert f"DELAYQ_EMBEDDED_PORT={broker_port} make worker" in banner
    # And its commands work exactly as printed
    scheduled = _run_as_printed(_banner_command(banner, "delayq schedule"))
    assert scheduled.returncode == 0, scheduled
    match = re.search(r"scheduled job (\S+)", scheduled.stdout)
    assert match, scheduled.stdout
    example = _run_as_printed(_banner_command(banner, "examples/schedule_confluent.py"))
    assert example.returncode == 0, example
    listed = _run_as_printed(_banner_command(banner, "delayq list"))
    assert listed.returncode == 0, listed
    cancel = [match[1] if arg == "JOB_ID" else arg for arg in _banner_command(banner, "cancel")]
    cancelled = _run_as_printed(cancel)
    assert cancelled.returncode == 0, cancelled


# --- make worker ----------------------------------------------------------------------------------


def test_worker_joins_the_running_broker_with_its_own_web_port_and_data_directory(
    broker: EmbeddedBroker,
    ns: Namespace,
    start_worker: WorkerFactory,
    tmp_path: Path,
    commands: list[_Command],
) -> None:
    # Given a broker and a worker owning every partition
    first = start_worker("a")
    assert first.health()["active_partitions"] == list(range(ns.partitions))
    # When make worker runs with only the broker's port (and the deployment's names) set
    joined = _Command(
        "worker", tmp_path / "joined.log", DELAYQ_EMBEDDED_PORT=str(broker.port), **ns.env()
    )
    commands.append(joined.start())
    wait_for(lambda: joined.printed(JOINED) or not joined.running(), "make worker's banner")
    text = joined.log_since_start()
    web = re.search(r"dashboard (http://127\.0\.0\.1:(\d+))/", text)
    data_dir = re.search(r"data directory (\S+) is removed", text)
    assert web and data_dir, joined.output()
    # Then it runs on a web port of its own (the first free one from 6067), with a data directory
    assert int(web[2]) >= 6067 and int(web[2]) != first.web_port
    assert Path(data_dir[1]).is_dir()
    # And it takes over partitions from the first worker
    wait_for(
        lambda: bool(_get_json(f"{web[1]}/health").get("active_partitions")),
        "partitions on the joined worker",
    )
    wait_for(
        lambda: len(first.health().get("active_partitions", [])) < ns.partitions,
        "the first worker to hand partitions over",
    )
    # And Ctrl-C stops it cleanly and removes its data directory
    joined.signal_group(signal.SIGINT)
    assert joined.proc is not None and joined.proc.wait(30) == 0, joined.output()
    assert not Path(data_dir[1]).exists()


def test_worker_without_a_broker_says_so_in_one_line() -> None:
    port = free_port()
    done = _embedded("worker", DELAYQ_EMBEDDED_PORT=str(port))
    assert done.returncode == 1, done
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"delayq: no broker on 127.0.0.1:{port}: start one with `make run`")


# --- a worker's log -----------------------------------------------------------------------------


def test_a_worker_start_logs_no_missing_sensor_state_warning(start_worker: WorkerFactory) -> None:
    # Given a worker started and ready (it went through its first rebalance)
    worker = start_worker("a")
    log = worker.log_path.read_text()
    # Then its log has none of Faust's "Missing sensor state for rebalance" warnings
    assert [line for line in log.splitlines() if "Missing sensor state" in line] == []
