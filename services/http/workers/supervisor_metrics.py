"""Metrics of the main process of `python -m services.http`, which supervises the workers (the
workers' own are in services.http.metrics).

Imported once the multiprocess folder is set (services.foundation.metrics): the samples land
in a file of the main process beside the workers', and every /metrics merges them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

WORKER_RESTARTS = Counter(
    "gatehouse_http_worker_restarts",
    "Worker processes that died while the server ran and were replaced, by cause: the signal "
    "that killed them (SIGKILL for an OOM kill), 'exit N', or 'stuck' (killed by the main process "
    "after GATEHOUSE_HTTP_WORKER_STUCK_TIMEOUT without a heartbeat)",
    ["cause"],
)
WORKERS_SERVING = Gauge(
    "gatehouse_http_workers_serving",
    "Worker processes whose heartbeat is at most 4 s old: new connections go only to them "
    "(services.http.workers.slot_listeners), to every worker while none is, or while the kernel "
    "refuses the program that steers them (gatehouse_http_connection_steering_refusals_total)",
    multiprocess_mode="livemax",
)
CONNECTION_STEERING_REFUSALS = Counter(
    "gatehouse_http_connection_steering_refusals",
    "Times the kernel refused the program that steers new connections to serving workers, by "
    "errno: EINVAL or ENOPROTOOPT turn the steering off for the process's life (new connections "
    "then go to every worker, a dead or stuck one's included); any other is tried again every "
    "second",
    ["error"],
)
