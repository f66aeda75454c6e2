"""Where delayq's tools look for the broker and a worker when no address is given.

One rule for the Python client, the ``delayq`` command and ``examples/schedule_confluent.py``
(which keeps a copy so that it imports nothing of delayq; a test keeps them equal): the
``DELAYQ_*`` variable of the address when it is set, else the port that ``make run`` was given
(``DELAYQ_EMBEDDED_PORT``, ``DELAYQ_WEB_PORT``), else the default port, on 127.0.0.1.

Standard library only: the client imports it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from app.errors import SettingsError

__all__ = [
    "BROKER_URL_ENV",
    "DEFAULT_BROKER_PORT",
    "DEFAULT_WEB_PORT",
    "EMBEDDED_PORT_ENV",
    "LOCALHOST",
    "WEB_PORT_ENV",
    "bootstrap_list",
    "default_bootstrap",
    "default_web_url",
]

BROKER_URL_ENV = "DELAYQ_BROKER_URL"
#: The port of the embedded broker (``make run``, ``app.embedded``).
EMBEDDED_PORT_ENV = "DELAYQ_EMBEDDED_PORT"
WEB_PORT_ENV = "DELAYQ_WEB_PORT"
#: The embedded broker's default port, and the ``DELAYQ_BROKER_URL`` default of ``app.settings``.
DEFAULT_BROKER_PORT = 9092
#: The ``DELAYQ_WEB_PORT`` default of ``app.settings``.
DEFAULT_WEB_PORT = 6066
LOCALHOST = "127.0.0.1"


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65_535):
        raise SettingsError(f"{name}: {text!r} is not a port (1-65535)")
    return int(text)


def bootstrap_list(servers: str | Iterable[str]) -> list[str]:
    """``k1:9092,k2:9092``, ``kafka://k1:9092;k2:9092`` or a list, as ``["k1:9092", ...]``."""
    items = re.split(r"[;,\s]+", servers) if isinstance(servers, str) else list(servers)
    hosts = [item.strip().split("://", 1)[-1] for item in items if item and item.strip()]
    if not hosts or not all(hosts):
        raise ValueError(f"bootstrap_servers: no broker address in {servers!r}")
    return hosts


def default_bootstrap(environ: Mapping[str, str] = os.environ) -> str:
    """``host:port[,...]``: ``$DELAYQ_BROKER_URL``, else ``127.0.0.1:$DELAYQ_EMBEDDED_PORT``,
    else ``127.0.0.1:9092``. A bad value is a :class:`SettingsError` naming the variable."""
    url = environ.get(BROKER_URL_ENV)
    if url is None:
        return f"{LOCALHOST}:{_port(environ, EMBEDDED_PORT_ENV, DEFAULT_BROKER_PORT)}"
    try:
        return ",".join(bootstrap_list(url))
    except ValueError:
        raise SettingsError(f"{BROKER_URL_ENV}: no broker address in {url!r}") from None


def default_web_url(environ: Mapping[str, str] = os.environ) -> str:
    """``http://127.0.0.1:$DELAYQ_WEB_PORT`` (port 6066 when unset)."""
    return f"http://{LOCALHOST}:{_port(environ, WEB_PORT_ENV, DEFAULT_WEB_PORT)}"
