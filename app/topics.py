"""The topics a worker reads and writes, each declared once (names from settings)."""

from __future__ import annotations

from typing import Any

from app.service import app, settings

__all__ = ["commands_channel", "dead_letter_topic", "ingest_topic", "raw_topic_options"]

#: Raw bytes in and out, with delayq's partition count.
raw_topic_options: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
    "partitions": settings.partitions,
}

#: What the agent reads: the ingest topic (public: one record per command) and the fired topic
#: (internal: removal and fence records). internal=True: Faust creates both topics with
#: ``settings.partitions`` before subscribing (a topic auto-created by the subscription would get
#: the broker's default partition count).
commands_channel: Any = app.topic(
    settings.ingest_topic, settings.fired_topic, internal=True, **raw_topic_options
)
#: The ingest topic alone, to send commands to (the fixed-delay routes). Derived, not declared
#: again; Faust's derive does not copy the serializers, hence the options.
ingest_topic: Any = commands_channel.derive(topics=[settings.ingest_topic], **raw_topic_options)
#: Public: records that broke the contract or could not be forwarded, with ``delayq-error``.
dead_letter_topic: Any = app.topic(settings.dead_letter_topic, **raw_topic_options)
