"""app/freeze.py: a process that stood still past the limit refuses to write; a new assignment
clears it. The process is a real child Python stopped with SIGSTOP, as a GC pause or a stalled VM
would stop a worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from app.freeze import FreezeWatch
from tests.support import wait_for

CHILD = """
import sys, time
from app.errors import FrozenTooLong
from app.freeze import FreezeWatch
watch = FreezeWatch(0.5)
watch.start()
print("ready", flush=True)
while True:
    try:
        watch.check()
    except FrozenTooLong as exc:
        print(exc, flush=True)
        watch.assigned()
        watch.check()  # cleared by the new assignment: does not raise
        print("cleared", flush=True)
        break
    time.sleep(0.02)
"""


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def test_a_process_stopped_past_the_limit_refuses_to_write_until_reassigned() -> None:
    # Given a process that checks its watch (limit 0.5 s) before each of its writes
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        # When the whole process is stopped for longer than the limit, then resumed
        os.kill(child.pid, signal.SIGSTOP)
        wait_for(lambda: _state(child.pid) == "T", "the child to stop", timeout=5)
        time.sleep(1.0)  # the stand-still under test
        os.kill(child.pid, signal.SIGCONT)
        # Then its next check refuses, naming how long it stood still; a new assignment clears it
        refused = child.stdout.readline()
        assert "stood still for" in refused and "longer than the group allows (0.5 s)" in refused
        assert child.stdout.readline().strip() == "cleared"
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_process_that_keeps_running_is_never_refused() -> None:
    # Given a watch with a limit of 0.5 s, ticking
    watch = FreezeWatch(0.5)
    watch.start()
    try:
        # When the process runs (sleeps in short steps) for longer than the limit
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            watch.check()
            time.sleep(0.05)
        # Then no check refused: it never stood still
        assert watch.frozen_for() == 0.0
    finally:
        watch.stop()
