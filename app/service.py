"""The Faust app, configured from :class:`app.settings.Settings`.

Imported by ``faust -A app worker``; a bad setting stops it here with a one-line message.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import faust
from faust.transport import by_url as transport_by_url
from faust.transport.drivers import aiokafka as faust_aiokafka

from app import tansu_compat
from app import transport as batch_transport
from app.errors import SettingsError
from app.settings import Settings, load_settings
from tables.rebuild import rebuild_if_marked

__all__ = ["app", "embedded", "settings"]

log = logging.getLogger(__name__)

#: The sensors' rebalance state when there are none (see DelayqApp.on_rebalance_start).
_NO_SENSOR_STATE: dict[Any, Any] = {"sensors": "none"}


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


class DelayqApp(faust.App):
    """Faust's App with a cheaper fetcher-to-stream hand-off on Kafka (app/transport.py).

    Faust's Monitor stays out of the sensors: it times and counts every record in and out
    (2-3% of a worker's CPU per job in the bench's steady scenario at 2,000 jobs/s), and
    delayq reads none of it (its counters are its own: /stats, /metrics).
    """

    def on_init_dependencies(self) -> Any:
        dependencies = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        return dependencies

    def on_rebalance_start(self) -> None:
        super().on_rebalance_start()
        # With no sensors, the sensors' rebalance state is {}: Faust takes that for a lost
        # state and warns "Missing sensor state for rebalance" twice per rebalance. A state
        # without sensors in it is the true one, and what each sensor (none) reads from it.
        if not self._rebalancing_sensor_state:
            self._rebalancing_sensor_state = _NO_SENSOR_STATE

    async def on_first_start(self) -> None:
        # Before any table partition opens: a table marked as ahead of its changelog is
        # emptied here, so that recovery restores it from the changelog (tables/rebuild.py).
        rebuild_if_marked(Path(self.conf.tabledir))
        await super().on_first_start()

    def _new_transport(self) -> Any:
        if transport_by_url(self.conf.broker_consumer[0]) is faust_aiokafka.Transport:
            return batch_transport.Transport(self.conf.broker_consumer, self)
        return super()._new_transport()


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
    web_host=settings.web_host,
    web_bind=settings.web_host,
    web_port=settings.web_port,
    canonical_url=settings.advertised_url or f"http://{settings.web_host}:{settings.web_port}",
    web_tables_enabled=False,
    web_router_enabled=False,  # Faust's /router/ pages (delayq routes with app.assignor)
    # A POST /jobs body carries the value base64-encoded: room for the largest forward.
    web_application_options={"client_max_size": settings.max_forward_bytes * 2 + 65_536},
)
