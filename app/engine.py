"""The delay engine: one object for a job's path, assembled from one module per step.

A job's path, top to bottom:

1. app/agents.py: the Faust agent reads ingest commands (and removal records) in batches;
2. app/ingest.py: :func:`app.ingest.apply_batch` applies them to the jobs table
   (:class:`app.ingest.TableWrites`) in the durability order written there;
3. tables/store.py: each partition's RocksDB database and its changelog;
4. app/firing.py: the firing loop (app/timers.py) scans what is due and forwards it;
5. app/settling.py: acks, retries, dead letters, and the removal records that the agent applies
   (back to 2), which delete the job.

app/moving.py sends commands that landed off their job's home partition there (back to 1).
app/handover.py keeps a partition from being fired twice when it moves between workers;
app/pending.py reads for the views; app/engine_state.py holds what the steps share.

Two callers, one worker, one thread: the agent (commands, removals, fences) and the firing loop
(:meth:`fire_due`, then :meth:`sleep_until`). Both take a :class:`Producer` and the views take
the same object, so the engine runs in unit tests with a stub producer and a fixed clock.
"""

from __future__ import annotations

from app.engine_state import DeadLetter, EngineConfig, Producer, Stats
from app.handover import Handover
from app.ingest import TableWrites
from app.moving import Moving
from app.pending import PendingReads

__all__ = ["DeadLetter", "Engine", "EngineConfig", "Producer", "Stats"]


class Engine(TableWrites, Moving, Handover, PendingReads):
    """Table writes for the agent, the firing pass and hand-over for the loop, reads for views.

    Built as ``Engine(store, producer, config, clock=now_ms)``
    (:class:`app.engine_state.EngineState`).
    """
