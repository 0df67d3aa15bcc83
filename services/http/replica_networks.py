"""Discovery records whose address is outside the allowed networks are not dialled.

Defence in depth behind etcd's own access control: if something that should not write etcd
manages to plant a record, the HTTP tier still dials only addresses inside
GATEHOUSE_AUTH_REPLICA_CIDRS. A record naming a host name, not an IP address, cannot be checked
without resolving it and is refused too while a list is set.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence

from services.foundation.discovery import ServiceRecord
from services.foundation.log_throttle import RepeatedWarnings
from services.http import metrics
from services.http.client_ip import Network

log = logging.getLogger(__name__)

# One line per refused record at most this often, however often discovery changes.
REFUSAL_LOG_INTERVAL = 60.0


class AllowedReplicaNetworks:
    """Passes on to `on_change` only the records inside `networks` (empty: every record)."""

    def __init__(
        self,
        networks: Sequence[Network],
        on_change: Callable[[dict[str, ServiceRecord]], None],
    ) -> None:
        self._networks = tuple(networks)
        self._on_change = on_change
        self._warnings = RepeatedWarnings(log, REFUSAL_LOG_INTERVAL)
        self._refused: dict[str, ServiceRecord] = {}

    def allows(self, host: str) -> bool:
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def update(self, records: dict[str, ServiceRecord]) -> None:
        allowed: dict[str, ServiceRecord] = {}
        refused: dict[str, ServiceRecord] = {}
        for instance_id, record in records.items():
            if self.allows(record.host):
                allowed[instance_id] = record
                continue
            refused[instance_id] = record
            if self._refused.get(instance_id) != record:
                metrics.DISCOVERY_RECORDS_REFUSED.inc()
                self._warnings.warn(
                    instance_id,
                    "ignoring discovery record %r: %s is outside GATEHOUSE_AUTH_REPLICA_CIDRS",
                    instance_id,
                    record.host,
                )
        self._refused = refused
        self._on_change(allowed)
