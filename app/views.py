"""HTTP views served by every worker's Faust web server (loopback by default)."""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View

from app.runtime import active_partitions, engine
from app.service import app
from tables.jobs import jobs_table

__all__ = ["health"]


def _standby_partitions() -> list[int]:
    changelog = jobs_table.changelog_topic.get_topic_name()
    return sorted(tp.partition for tp in app.assignor.assigned_standbys() if tp.topic == changelog)


@app.page("/health")
class health(View):
    """200 once this worker's tables are recovered and it is firing; 503 before."""

    async def get(self, request: Request) -> Response:
        ready = bool(app.tables.actives_ready) and not app.rebalancing
        body: dict[str, Any] = {
            "status": "ok" if ready else "recovering",
            "active_partitions": active_partitions() if ready else [],
            "standby_partitions": _standby_partitions() if ready else [],
            "next_wake_ms": engine.next_wake_ms,
        }
        return self.json(body, status=200 if ready else 503)
