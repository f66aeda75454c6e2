"""delayq: a durable delay queue for Apache Kafka (``faust -A app worker``).

The Faust app is loaded on first access of ``app.app``, so that light modules (the client, the
CLI, the embedded broker) import without Faust and without reading worker settings.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name != "app":
        raise AttributeError(f"module 'app' has no attribute {name!r}")
    # Register the Faust primitives on the app: one module each.
    from app import agents, probes, timers, views  # noqa: F401

    if importlib.util.find_spec("app.dashboard") is not None:
        importlib.import_module("app.dashboard")
    from app.service import app as faust_app

    globals()["app"] = faust_app
    return faust_app
