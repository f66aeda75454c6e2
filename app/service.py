"""The Faust app, configured from :class:`app.settings.Settings`.

Imported by ``faust -A app worker``; a bad setting stops it here with a one-line message.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import faust

from app import tansu_compat
from app.errors import SettingsError
from app.freeze import FreezeWatch
from app.settings import Settings, load_settings
from app.upstream.faust_app import TunedApp
from tables.rebuild import rebuild_if_marked, remove_unacked_partitions, stop_for_rebuild

__all__ = ["app", "embedded", "settings"]

log = logging.getLogger(__name__)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"delayq: invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _is_embedded(settings: Settings) -> bool:
    if settings.broker_kind == "auto":
        return tansu_compat.is_tansu(settings.bootstrap_servers)
    return settings.broker_kind == "embedded"


settings = _settings()
#: True when talking to the embedded Tansu broker: only then do its workarounds apply.
embedded = _is_embedded(settings)
if embedded:
    tansu_compat.install()

# Real clusters: Kafka's group.min.session.timeout.ms is 6 s, so 10 s / 3 s are safe defaults.
_session_timeout = settings.session_timeout_s or (
    tansu_compat.SESSION_TIMEOUT_S if embedded else 10.0
)
_heartbeat = settings.heartbeat_interval_s or (
    tansu_compat.HEARTBEAT_INTERVAL_S if embedded else 3.0
)

if _heartbeat >= _session_timeout:
    print(
        f"delayq: invalid settings: DELAYQ_HEARTBEAT_INTERVAL_S ({_heartbeat}) must be below "
        f"the session timeout ({_session_timeout})",
        file=sys.stderr,
    )
    raise SystemExit(2)

#: Past this stand-still the group may have expired the worker (its last heartbeat can predate
#: the stall by one interval): every write checks it first (app/freeze.py).
freeze_watch = FreezeWatch(_session_timeout - _heartbeat)


def _credentials(settings: Settings) -> Any:
    """Faust's form of the Kafka security settings (None for PLAINTEXT)."""
    if settings.security_protocol.startswith("SASL"):
        password = settings.sasl_password
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=password.get_secret_value() if password else None,
            ssl_context=settings.ssl_context(),
            mechanism=settings.sasl_mechanism,
        )
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(settings.ssl_context())
    return None


class DelayqApp(TunedApp):
    """Faust's App as delayq runs it (the overrides of Faust's internals: app/upstream/)."""

    async def on_first_start(self) -> None:
        # Before any table partition opens: a table marked as ahead of its changelog is
        # emptied here, so that recovery restores it from the changelog (tables/rebuild.py).
        rebuild_if_marked(Path(self.conf.tabledir))
        remove_unacked_partitions(Path(self.conf.tabledir))
        freeze_watch.start()
        await super().on_first_start()

    async def on_stop(self) -> None:
        freeze_watch.stop()
        await super().on_stop()


app = DelayqApp(
    settings.app_id,
    broker=settings.broker_url,
    broker_credentials=_credentials(settings),
    store="rocksdb://",
    datadir=str(settings.data_dir),
    autodiscover=False,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    table_standby_replicas=settings.standby_replicas,
    processing_guarantee="at_least_once",
    producer_acks=-1,
    # Room for a dead letter of the largest forward plus delayq's headers.
    producer_max_request_size=settings.max_forward_bytes * 2 + 65_536,
    producer_request_timeout=max(30.0, settings.forward_timeout_s * 3),
    broker_session_timeout=_session_timeout,
    broker_heartbeat_interval=_heartbeat,
    broker_rebalance_timeout=max(60.0, _session_timeout * 3),
    consumer_auto_offset_reset="earliest",
    # Commits come only from Faust's commit timer, never from the stream's hand-over: a commit
    # waits for the producer's flush, and a record the broker refuses for a while (a dead
    # letter, a changelog record) would stop the ingest stream with it (app/settling.py).
    broker_commit_every=2**62,
    web_host=settings.web_host,
    web_bind=settings.web_host,
    web_port=settings.web_port,
    canonical_url=settings.advertised_url or f"http://{settings.web_host}:{settings.web_port}",
    web_tables_enabled=False,
    web_router_enabled=False,  # Faust's /router/ pages (delayq routes with app.assignor)
    # A POST /jobs body carries the value base64-encoded: room for the largest forward.
    web_application_options={"client_max_size": settings.max_forward_bytes * 2 + 65_536},
)
# A worker that stood still past its session stops as one whose table is ahead of its changelog.
freeze_watch.on_frozen = lambda exc: stop_for_rebuild(app, str(exc), exc)
