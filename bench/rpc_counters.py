"""The auth replicas' RPC counters, read from their /metrics: TLS handshakes and calls answered."""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from services.foundation.metrics import RENDER_INTERVAL_SECONDS

HANDSHAKES_SAMPLE = "gatehouse_auth_rpc_tls_handshakes_total"
CALLS_SAMPLE = "gatehouse_auth_rpc_handler_seconds_count"  # one per call, every method and status
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class RpcCounters:
    tls_handshakes: float
    calls: float

    def __add__(self, other: RpcCounters) -> RpcCounters:
        return RpcCounters(self.tls_handshakes + other.tls_handshakes, self.calls + other.calls)

    def __sub__(self, other: RpcCounters) -> RpcCounters:
        return RpcCounters(self.tls_handshakes - other.tls_handshakes, self.calls - other.calls)


def parse_counters(exposition: str) -> RpcCounters:
    """The counters in one /metrics page (a plaintext replica has no handshakes: 0)."""
    totals = {HANDSHAKES_SAMPLE: 0.0, CALLS_SAMPLE: 0.0}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return RpcCounters(totals[HANDSHAKES_SAMPLE], totals[CALLS_SAMPLE])


def read_counters(metrics_urls: list[str], *, settled_since: float | None = None) -> RpcCounters:
    """The replicas' counters summed. `settled_since` (time.monotonic() when a load ended): a
    replica serves a copy of its metrics up to RENDER_INTERVAL_SECONDS old, so the read waits
    until any copy it gets was rendered after the load."""
    if settled_since is not None:
        time.sleep(max(0.0, settled_since + RENDER_INTERVAL_SECONDS - time.monotonic()))
    total = RpcCounters(0.0, 0.0)
    for url in metrics_urls:
        with _NO_PROXY.open(url, timeout=5) as response:
            total += parse_counters(response.read().decode())
    return total
