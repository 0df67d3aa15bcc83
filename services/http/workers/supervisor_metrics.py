"""Metrics of the main process of `python -m services.http`, which supervises the workers (the
workers' own are in services.http.metrics).

Imported once the multiprocess folder is set (services.foundation.metrics): the samples land
in a file of the main process beside the workers', and every /metrics merges them.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge

from services.http.workers.respawn import STALLED_AFTER_SECONDS
from services.http.workers.slot_listeners import SteeringReport

WORKER_RESTARTS = Counter(
    "gatehouse_http_worker_restarts",
    "Worker processes that died while the server ran and were replaced, by cause: the signal "
    "that killed them (SIGKILL for an OOM kill), 'exit N', or 'stuck' (killed by the main process "
    "after GATEHOUSE_HTTP_WORKER_STUCK_TIMEOUT without a heartbeat)",
    ["cause"],
)
WORKERS_SERVING = Gauge(
    "gatehouse_http_workers_serving",
    f"Worker processes whose heartbeat is at most {STALLED_AFTER_SECONDS:g} s old (any age "
    "after the main process itself was paused) and says ready, or all of those while none is "
    "ready: while gatehouse_http_connection_steering is 1, new connections go only to them, and "
    "to every worker while none beats",
    multiprocess_mode="livemax",
)
CONNECTION_STEERING = Gauge(
    "gatehouse_http_connection_steering",
    "1 while new connections go where the workers' latest state says (to the serving ones; to "
    "every worker while none serves); 0 while the kernel refuses the program that steers them "
    "(gatehouse_http_connection_steering_refusals_total says why): new connections may then go "
    "to a dead or stuck worker's socket",
    multiprocess_mode="livemax",
)
CONNECTION_STEERING_REFUSALS = Counter(
    "gatehouse_http_connection_steering_refusals",
    "Times the kernel refused the program that steers new connections to serving workers, by "
    "errno: after EINVAL or ENOPROTOOPT it is not tried again (new connections go to every "
    "worker for the process's life); any other is tried again every second",
    ["error"],
)


def steering_metrics(steered: threading.Event) -> SteeringReport:
    """The report to the metrics, and to `steered` (read by the ops port's /readyz)."""

    def note_steered(on: bool) -> None:
        CONNECTION_STEERING.set(int(on))
        if on:
            steered.set()
        else:
            steered.clear()

    return SteeringReport(
        serving=WORKERS_SERVING.set,
        steered=note_steered,
        refused=lambda error: CONNECTION_STEERING_REFUSALS.labels(error=error).inc(),
    )
