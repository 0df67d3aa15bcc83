"""Metrics of the main process of `python -m services.http`, which supervises the workers (the
workers' own are in services.http.metrics).

Imported once the multiprocess folder is set (services.foundation.metrics): the samples land
in a file of the main process beside the workers', and every /metrics merges them.
"""

from __future__ import annotations

from prometheus_client import Counter

WORKER_RESTARTS = Counter(
    "gatehouse_http_worker_restarts",
    "Worker processes that died while the server ran and were replaced, by cause: the signal "
    "that killed them (SIGKILL for an OOM kill), 'exit N', or 'stuck' (killed by the main process "
    "after GATEHOUSE_HTTP_WORKER_STUCK_TIMEOUT without a heartbeat)",
    ["cause"],
)
