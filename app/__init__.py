"""delayq: a durable delay queue for Apache Kafka (``faust -A app worker``)."""

from app.service import app

# Register the Faust primitives on the app (one module each).
from app import agents, timers  # noqa: E402, F401  isort: skip

__all__ = ["app"]
