"""Faust's App with the batch-draining transport on Kafka (app.upstream.consumer)."""

from __future__ import annotations

from typing import Any

import faust
from faust.transport import by_url as transport_by_url
from faust.transport.drivers import aiokafka as faust_aiokafka

import app.upstream  # noqa: F401  (checks the library versions first)
from app.upstream.consumer import Transport

__all__ = ["TunedApp"]


class TunedApp(faust.App):
    """Faust's App with the batch-draining consumer when the broker is Kafka (``kafka://``)."""

    # Replaces faust/app/base.py App._new_transport (lines 1932-1938) for Faust's aiokafka
    # transport only (the gain is that of app.upstream.consumer). Faust's public alternative, a
    # "faust.transports" entry point, needs its own broker URL scheme and an installed package.
    def _new_transport(self) -> Any:
        if transport_by_url(self.conf.broker_consumer[0]) is faust_aiokafka.Transport:
            return Transport(self.conf.broker_consumer, self)
        return super()._new_transport()
