"""Prometheus metrics of the RPC server (the auth service serves them on its ops port).

The names keep their `gatehouse_auth_` prefix: the auth service is the one process that runs
the server, and dashboards and alerts already use them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

RPC_HANDLER_SECONDS = Histogram(
    "gatehouse_auth_rpc_handler_seconds",
    "Time from a call's arrival to its answer, by method and status",
    ["method", "status"],
    buckets=LATENCY_BUCKETS,
)
RPC_CONNECTIONS = Gauge("gatehouse_auth_rpc_connections", "Open RPC connections")
RPC_IN_FLIGHT = Gauge("gatehouse_auth_rpc_in_flight", "Calls being executed")
RPC_CANCELLED = Counter(
    "gatehouse_auth_rpc_cancelled_total",
    "Calls their caller cancelled while they were in flight (METHOD_CANCEL)",
)
RPC_REJECTED_CONNECTIONS = Counter(
    "gatehouse_auth_rpc_rejected_connections_total",
    "Connections closed by the server, by reason",
    ["reason"],
)
DRAINING = Gauge("gatehouse_auth_draining", "1 while this replica is shutting down")
RPC_EXPIRED = Counter(
    "gatehouse_auth_rpc_expired_total",
    "Calls refused unrun because their caller had given up, by method and where: on arrival "
    "(by the caller's clock when the frame was read) or before_write (when a database write "
    "was about to start)",
    ["method", "stage"],
)
RPC_READING_PAUSED = Counter(
    "gatehouse_auth_rpc_reading_paused_total",
    "Times the server stopped reading a connection, by why: calls_in_flight (it had "
    "GATEHOUSE_MAX_CALLS_PER_CONNECTION calls in flight), calls_per_peer (its address had "
    "GATEHOUSE_MAX_CALLS_PER_PEER over its connections) or write_buffer (its replies passed "
    "GATEHOUSE_WRITE_HIGH_WATER_BYTES unsent: its peer does not read them)",
    ["reason"],
)
RPC_CONNECTION_CALLS_PEAK = Gauge(
    "gatehouse_auth_rpc_connection_calls_peak",
    "Most calls in flight on one connection at once since this replica started (to size "
    "GATEHOUSE_MAX_CALLS_PER_CONNECTION)",
)
RPC_PERMISSION_DENIED = Counter(
    "gatehouse_auth_rpc_permission_denied_total",
    "Calls refused unrun: the caller's certificate identity may not call the method",
    ["method"],
)
RPC_TLS_HANDSHAKES = Counter(
    "gatehouse_auth_rpc_tls_handshakes_total",
    "TLS handshakes the RPC server completed (pooled connections make them rare)",
)
