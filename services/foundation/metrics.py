"""Prometheus exposition shared by both tiers.

A server with several worker processes (the HTTP tier) runs prometheus-client in
multiprocess mode: every worker writes its samples under PROMETHEUS_MULTIPROC_DIR and
`/metrics` merges them, so a scrape covers every worker rather than whichever one answered.
The variable must be set before prometheus_client is first imported (it picks its storage
then), so this module imports prometheus_client only inside the functions that render.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from starlette.responses import Response

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(path: Path) -> None:
    """Empty `path` (stale files from an earlier run would be merged) and point workers at it."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (multiprocess_mode='live*')."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def render_metrics() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def metrics_response() -> Response:
    body, content_type = render_metrics()
    return Response(body, media_type=content_type)
