"""Auth replica discovery records in etcd: published by the auth service, watched by the HTTP tier.

Key: `<discovery prefix><instance-id>`; value: JSON with host, port, protocol range, release
and start time, on a lease so a dead replica disappears within the TTL.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeGuard

from services.foundation.config import parse_prefix, setting
from services.foundation.etcd import LeasedKey, PrefixWatcher, parse_endpoints
from services.foundation.etcd_access import EtcdAccess, EtcdTarget
from services.foundation.log_throttle import RepeatedWarnings

log = logging.getLogger(__name__)
# A flood of malformed records (every change re-reads them all) is one line per 10 s; the
# watcher's `on_malformed` learns how many there are now, those whose line was held back too.
_rejections = RepeatedWarnings(log, interval=10.0)


@dataclass(frozen=True, kw_only=True)
class DiscoverySettings:
    """Where both tiers meet in etcd; part of each tier's settings."""

    etcd_endpoints: tuple[str, ...] = setting(
        "GATEHOUSE_ETCD_ENDPOINTS",
        ("127.0.0.1:2379",),
        "etcd client endpoints, host:port, comma-separated",
        parse=parse_endpoints,
    )
    discovery_prefix: str = setting(
        "GATEHOUSE_DISCOVERY_PREFIX",
        "/gatehouse/services/auth/",
        "etcd prefix of auth replica records",
        parse=parse_prefix,
    )
    jwt_keys_prefix: str = setting(
        "GATEHOUSE_JWT_KEYS_PREFIX",
        "/gatehouse/jwt-keys/",
        "etcd prefix of published JWT public keys",
        parse=parse_prefix,
    )
    etcd_username: str = setting(
        "GATEHOUSE_ETCD_USERNAME", "", "etcd user (etcd auth); empty: no authentication"
    )
    etcd_password: str = setting(
        "GATEHOUSE_ETCD_PASSWORD",
        "",
        "Password of GATEHOUSE_ETCD_USERNAME (or use GATEHOUSE_ETCD_PASSWORD_FILE)",
        secret=True,
    )
    etcd_password_file: str = setting(
        "GATEHOUSE_ETCD_PASSWORD_FILE",
        "",
        "File holding the etcd password, read at each new etcd connection",
    )
    etcd_ca_file: str = setting(
        "GATEHOUSE_ETCD_CA_FILE",
        "",
        "PEM CA that verifies etcd's server certificate; set: TLS to etcd, empty: plaintext",
    )
    etcd_cert_file: str = setting(
        "GATEHOUSE_ETCD_CERT_FILE", "", "PEM client certificate for etcd (optional, with TLS)"
    )
    etcd_key_file: str = setting(
        "GATEHOUSE_ETCD_KEY_FILE", "", "PEM key of GATEHOUSE_ETCD_CERT_FILE"
    )

    @property
    def etcd_access(self) -> EtcdAccess:
        return EtcdAccess(
            endpoints=self.etcd_endpoints,
            username=self.etcd_username,
            password=self.etcd_password,
            password_file=self.etcd_password_file,
            ca_file=self.etcd_ca_file,
            cert_file=self.etcd_cert_file,
            key_file=self.etcd_key_file,
        )


@dataclass(frozen=True)
class ServiceRecord:
    instance_id: str
    host: str
    port: int
    protocol_min: int
    protocol_max: int
    release: str
    started_at: str  # RFC 3339

    def to_json(self) -> bytes:
        fields = asdict(self)
        del fields["instance_id"]  # it is the key's last segment
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, instance_id: str, raw: bytes) -> ServiceRecord:
        """Parse a record, raising ValueError for anything malformed."""
        try:
            fields = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
        host, port = fields.get("host"), fields.get("port")
        protocol_min, protocol_max = fields.get("protocol_min"), fields.get("protocol_max")
        if not is_instance_id(instance_id):
            raise ValueError("the instance id (the key's last segment) is not a pod name")
        if not isinstance(host, str) or not is_host(host):
            raise ValueError("host missing, or neither an IP address nor a DNS name")
        if not _is_int(port) or not 0 < port < 65536:
            raise ValueError("port missing or out of range")
        if (
            not _is_int(protocol_min)
            or not _is_int(protocol_max)
            or not 0 < protocol_min <= protocol_max
        ):
            raise ValueError("protocol_min/protocol_max missing or inverted")
        release, started_at = str(fields.get("release", "")), str(fields.get("started_at", ""))
        if len(release) > MAX_LABEL_CHARS or len(started_at) > MAX_LABEL_CHARS:
            raise ValueError(f"release or started_at over {MAX_LABEL_CHARS} characters")
        return cls(
            instance_id=instance_id,
            host=host,
            port=port,
            protocol_min=protocol_min,
            protocol_max=protocol_max,
            release=release,
            started_at=started_at,
        )


# A record's release and start time, for logs: a writer of etcd could otherwise make every
# HTTP worker keep megabytes per record it has seen.
MAX_LABEL_CHARS = 200
# What a pod name, or hostname-pid, can be; it becomes a metric label and a log field.
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
# Underscores too: resolvers take them, and container names (Compose) have them.
_DNS_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def is_host(host: str) -> bool:
    """An IP address, or a name a resolver takes (labels of 1-63 letters, digits, hyphens and
    underscores, 253 characters at most, one trailing dot allowed)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host.removesuffix(".")
    return len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in name.split("."))


def is_instance_id(instance_id: str) -> bool:
    return _INSTANCE_ID.fullmatch(instance_id) is not None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def registration(
    access: EtcdTarget,
    prefix: str,
    record: ServiceRecord,
    ttl: int,
    on_change: Callable[[bool], None] | None = None,
) -> LeasedKey:
    """The leased key that announces `record`; start() it to register, stop() to leave."""
    return LeasedKey(access, prefix + record.instance_id, record.to_json(), ttl, on_change)


class ReplicaWatcher:
    """The current set of auth replicas under `prefix`; malformed records are skipped."""

    def __init__(
        self,
        access: EtcdTarget,
        prefix: str,
        on_change: Callable[[dict[str, ServiceRecord]], None],
        on_malformed: Callable[[int], None] = lambda count: None,
    ) -> None:
        self._on_change = on_change
        self._on_malformed = on_malformed
        self._rejected: dict[str, bytes] = {}
        self._watcher = PrefixWatcher(access, prefix, self._parse)
        self.records: dict[str, ServiceRecord] = {}

    async def start(self) -> None:
        await self._watcher.start()

    async def stop(self) -> None:
        await self._watcher.stop()

    @property
    def synced(self) -> bool:
        return self._watcher.synced.is_set()

    async def wait_synced(self) -> None:
        """Until the first snapshot of the records has been taken."""
        await self._watcher.synced.wait()

    def _parse(self, values: dict[str, bytes]) -> None:
        records: dict[str, ServiceRecord] = {}
        rejected: dict[str, bytes] = {}
        for instance_id, raw in values.items():
            if "/" in instance_id:
                continue  # a deeper key is not a replica record
            try:
                records[instance_id] = ServiceRecord.from_json(instance_id, raw)
            except ValueError as exc:
                rejected[instance_id] = raw
                if self._rejected.get(instance_id) != raw:
                    _rejections.warn(
                        "malformed",
                        "ignoring malformed discovery record %r: %s",
                        instance_id[:80],
                        exc,
                    )
        self._rejected = rejected
        self._on_malformed(len(rejected))
        self.records = records
        self._on_change(records)
