"""Every name delayq puts on the wire: header names and default topic names.

Header names are the public contract (README, "Wire contract"); change them only with a new
major version.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_DEAD_LETTER_TOPIC",
    "DEFAULT_FIRED_TOPIC",
    "DEFAULT_INGEST_TOPIC",
    "HEADER_DELAY_MS",
    "HEADER_DUE_MS",
    "HEADER_ERROR",
    "HEADER_JOB_ID",
    "HEADER_KEY",
    "HEADER_PREFIX",
    "HEADER_TARGET",
    "JOBS_TABLE",
]

HEADER_PREFIX = "delayq-"
#: Schedule: the topic the job is forwarded to. Its absence (with a null value) means cancel.
HEADER_TARGET = "delayq-target"
#: Schedule: absolute due time, epoch milliseconds, decimal ASCII.
HEADER_DUE_MS = "delayq-due-ms"
#: Schedule: delay in milliseconds added to the record's timestamp, decimal ASCII.
HEADER_DELAY_MS = "delayq-delay-ms"
#: Schedule: key of the forwarded record (default: the job id).
HEADER_KEY = "delayq-key"
#: Forwarded and dead-lettered records: the job id, stable across re-deliveries.
HEADER_JOB_ID = "delayq-job-id"
#: Dead-lettered records: why.
HEADER_ERROR = "delayq-error"

DEFAULT_INGEST_TOPIC = "delayq-ingest"
DEFAULT_DEAD_LETTER_TOPIC = "delayq-dead-letters"
#: Internal: acknowledgements of forwarded jobs, co-partitioned with the ingest topic.
DEFAULT_FIRED_TOPIC = "delayq-fired"
#: The table of pending jobs; its changelog topic is ``{app_id}-jobs-changelog``.
JOBS_TABLE = "jobs"
