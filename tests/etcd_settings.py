"""The settings fields (shared by both tiers' settings) that make a process connect to etcd
the way an `EtcdAccess` does, for tests that build settings objects directly."""

from __future__ import annotations

from services.foundation.etcd_access import EtcdAccess


def etcd_settings(access: EtcdAccess) -> dict[str, str | tuple[str, ...]]:
    return {
        "etcd_endpoints": access.endpoints,
        "etcd_username": access.username,
        "etcd_password": access.password,
        "etcd_password_file": access.password_file,
        "etcd_ca_file": access.ca_file,
        "etcd_cert_file": access.cert_file,
        "etcd_key_file": access.key_file,
    }
