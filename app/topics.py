"""The topics a worker reads and writes (names from settings)."""

from __future__ import annotations

from typing import Any

from app.service import app, settings

__all__ = ["dead_letter_topic", "ingest_topic"]

_raw: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
    "partitions": settings.partitions,
}

#: Public: one record per command (schedule, replace, cancel).
ingest_topic: Any = app.topic(settings.ingest_topic, **_raw)
#: Public: records that broke the contract or could not be forwarded, with ``delayq-error``.
dead_letter_topic: Any = app.topic(settings.dead_letter_topic, **_raw)
