"""Chaos run for delayq: load, killed and frozen workers, a paused broker, a reconciliation.

``make chaos`` / ``python -m chaos --help``. See ``chaos/run.py`` for the timeline and
``chaos/reconcile.py`` for what each figure means. Results: ``chaos/results/latest.json`` and one
``chaos/results/run-*/`` directory per run (worker logs, progress, table, result.json).
"""
