"""Why a forward happened: each suspicious forward against the jobs changelog.

The jobs changelog (``<app id>-jobs-changelog``) records every change a worker made to a job's
due key, with the worker's clock: a put when it applied a schedule (the value's version is the
schedule's ingest offset), a delete when it applied a cancel, a replace with another due time,
or a removal after a forward. Against the forward's timestamp that tells:

For a forward of a schedule that a cancel or replace acknowledged before its due time
superseded (``superseded``):

- ``ingest lag``: no worker had applied the cancel/replace when the job was forwarded: it had
  not read it yet, and fired the job without waiting for it.
- ``replay``: a worker had applied the cancel/replace, then the old schedule was put back
  (the same version again) and fired: a worker re-read ingest commands it had already applied
  (a restart or rebalance resumes from the last *committed* ingest offset), re-applied the old
  schedule, and the firing loop forwarded it before the agent re-applied the cancel/replace.
- ``same firing pass``: forwarded less than a second after the cancel/replace was applied,
  not put back: the firing pass had collected the job before the agent applied the command,
  and sent it after (``Engine.fire_due`` collects, then awaits each send; the agent runs in
  between).
- ``stale table``: applied, never put back, forwarded later than that (suspect).

For a duplicate (a second forward of the same schedule, ``duplicate``):

- ``replay``: the job was removed after its first forward, then put back (same version) and
  forwarded again: the same re-reading of already applied ingest commands.
- ``ack timeout``: still in the table, forwarded again the workers' ``DELAYQ_ACK_TIMEOUT_S``
  (less a second) or more after the first: its removal (the fired record, read by the same
  agent as the ingest topic) was not applied within it, so the worker forwarded it again.
- ``re-forward before ack timeout``: still in the table, forwarded again sooner: a new owner
  after a rebalance or a kill (the in-flight marks are per worker), or a forward whose
  acknowledgement took longer than ``DELAYQ_FORWARD_TIMEOUT_S`` and was retried.
- ``removed, then forwarded``: removed and not put back, yet forwarded again (suspect).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["Event", "duplicate_cause", "format_events", "superseded_cause"]

Event = dict[str, Any]  # {"ts", "op": "put"/"delete", "due_ms", "version"?, "changelog"}

#: The worker starts the ack timeout when its firing pass begins, before the first forward's
#: record timestamp: a second forward can follow the first by a little less than the timeout.
ACK_TIMEOUT_SLACK_MS = 1_000
#: A forward this soon after the cancel/replace was applied comes from a pass that had read the
#: job before: the engine collects due jobs first, then awaits each send.
SAME_PASS_MS = 1_000


def format_events(events: Sequence[Event], origin_ms: int) -> list[str]:
    """Changelog events as lines, times relative to ``origin_ms`` (a due time)."""
    out = []
    for e in events:
        version = f" v{e['version']}" if "version" in e else ""
        out.append(
            f"{e['ts'] - origin_ms:+d} ms {e['op']} due{e['due_ms'] - origin_ms:+d}{version} "
            f"({e['changelog']})"
        )
    return out


def superseded_cause(
    due: int, version: int, next_version: int, is_cancel: bool, fwd_ts: int, events: Sequence[Event]
) -> tuple[str, str]:
    """(cause, explanation) of a forward of a schedule superseded before its due time."""
    what = "cancel" if is_cancel else "replace"
    puts = [e for e in events if e["op"] == "put" and e.get("version") == version]
    applied = [
        e
        for e in events
        if (e["op"] == "delete" and e["due_ms"] == due)
        or (e["op"] == "put" and e.get("version") == next_version)
    ]
    if not puts:
        return "unknown", "the schedule is not in the changelog"
    before = [e for e in applied if e["ts"] <= fwd_ts]
    if not before:
        after = min(e["ts"] for e in applied) - fwd_ts if applied else None
        return "ingest lag", (
            f"no worker had applied the {what} when it was forwarded"
            + (f" (applied {after} ms after the forward)" if after is not None else "")
        )
    first = min(before, key=lambda e: e["offset"])
    put_back = [e for e in puts if e["offset"] > first["offset"] and e["ts"] <= fwd_ts]
    if put_back:
        return "replay", (
            f"the {what} was applied {fwd_ts - first['ts']} ms before the forward, the old "
            f"schedule was put back {fwd_ts - max(e['ts'] for e in put_back)} ms before it"
        )
    after = fwd_ts - first["ts"]
    if after < SAME_PASS_MS:
        return "same firing pass", (
            f"forwarded {after} ms after the {what} was applied: the firing pass had picked the "
            f"job up before, and sent it after"
        )
    return "stale table", f"forwarded {after} ms after the {what} was applied"


def duplicate_cause(
    due: int,
    version: int,
    first_ts: int,
    second_ts: int,
    events: Sequence[Event],
    ack_timeout_ms: int,
) -> str:
    """The cause of a second forward of the same schedule (see the module docstring).

    ``ack_timeout_ms``: the ``DELAYQ_ACK_TIMEOUT_S`` the workers ran with.
    """
    removed = [
        e["offset"]
        for e in events
        if e["op"] == "delete" and e["due_ms"] == due and first_ts <= e["ts"] <= second_ts
    ]
    if removed:
        put_back = [
            e
            for e in events
            if e["op"] == "put" and e.get("version") == version and e["offset"] > min(removed)
        ]
        if any(e["ts"] <= second_ts for e in put_back):
            return "replay"
        return "removed, then forwarded"
    if second_ts - first_ts >= ack_timeout_ms - ACK_TIMEOUT_SLACK_MS:
        return "ack timeout"
    return "re-forward before ack timeout"
