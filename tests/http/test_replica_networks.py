"""Discovery records outside GATEHOUSE_AUTH_REPLICA_CIDRS are ignored (real etcd)."""

from __future__ import annotations

import logging
import uuid

import pytest
from prometheus_client import REGISTRY

from devstack.ports import wait_until_async
from services.foundation.config import ConfigError, load_settings
from services.foundation.discovery import ReplicaWatcher, ServiceRecord, registration
from services.http.client_ip import parse_trusted_proxies
from services.http.replica_networks import AllowedReplicaNetworks
from services.http.settings import HttpSettings

REFUSED = "gatehouse_http_discovery_records_refused_total"


def record(instance_id: str, host: str) -> ServiceRecord:
    return ServiceRecord(instance_id, host, 7000, 1, 1, "test", "2026-12-03T00:00:00Z")


def refused_count() -> float:
    return REGISTRY.get_sample_value(REFUSED) or 0.0


async def test_records_outside_the_cidrs_are_ignored(data_stores, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="services.http.replica_networks")
    endpoints = data_stores.etcd_access()
    prefix = f"/test-{uuid.uuid4().hex}/auth/"
    passed: list[dict[str, ServiceRecord]] = []
    allowed = AllowedReplicaNetworks(parse_trusted_proxies("127.0.0.0/8"), passed.append)
    watcher = ReplicaWatcher(endpoints, prefix, allowed.update)
    before = refused_count()
    keys = [
        registration(endpoints, prefix, record("inside", "127.0.0.7"), ttl=5),
        registration(endpoints, prefix, record("relay", "10.66.0.1"), ttl=5),
        registration(endpoints, prefix, record("by-name", "relay.example"), ttl=5),
    ]
    await watcher.start()
    for key in keys:
        await key.start()
    try:
        await wait_until_async(
            lambda: len(watcher.records) == 3, 10.0, "all three records to be watched"
        )
        assert set(passed[-1]) == {"inside"}
        assert refused_count() - before == 2
        refusals = [
            r.getMessage()
            for r in caplog.records
            if "GATEHOUSE_AUTH_REPLICA_CIDRS" in r.getMessage()
        ]
        assert len(refusals) == 2 and any("10.66.0.1" in line for line in refusals)
    finally:
        for key in keys:
            await key.stop()
        await watcher.stop()


def test_empty_list_allows_any_address() -> None:
    passed: list[dict[str, ServiceRecord]] = []
    AllowedReplicaNetworks((), passed.append).update({"far": record("far", "203.0.113.9")})
    assert set(passed[-1]) == {"far"}


def test_setting_is_parsed_and_checked() -> None:
    base = {"GATEHOUSE_CSRF_SECRET": "x" * 40}
    settings = load_settings(
        HttpSettings, {**base, "GATEHOUSE_AUTH_REPLICA_CIDRS": "10.0.0.0/8, fd00::/8"}
    )
    assert [str(network) for network in settings.auth_replica_cidrs] == ["10.0.0.0/8", "fd00::/8"]
    with pytest.raises(ConfigError, match="GATEHOUSE_AUTH_REPLICA_CIDRS"):
        load_settings(HttpSettings, {**base, "GATEHOUSE_AUTH_REPLICA_CIDRS": "not-a-net"})
