"""Settings of the `gatehouse` command (read by the one loader, services/foundation/config.py).

It runs where an auth replica runs (`kubectl exec deploy/<release>-auth -- gatehouse ...`), so
by default it calls the replica of its own pod: 127.0.0.1 (or the bind address, when that is a
specific one) and GATEHOUSE_AUTH_PORT, the replica's own settings.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from services.auth.settings import RpcListenSettings
from services.cli.errors import BadConfiguration
from services.foundation.config import (
    ConfigError,
    SettingsT,
    bounds_problems,
    load_settings,
    report_problems,
    setting,
)
from services.foundation.rpc.client import ClientTls
from services.foundation.rpc.tls import TlsFiles, client_context, trust_domain_problem

_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::", "[::]"})


@dataclass(frozen=True, kw_only=True)
class CliSettings(RpcListenSettings):
    auth_address: str = setting(
        "GATEHOUSE_CLI_AUTH_ADDRESS",
        "",
        "host:port of the auth replica the gatehouse command calls (also --auth-address); "
        "empty: the replica of its own pod, 127.0.0.1 and GATEHOUSE_AUTH_PORT",
    )
    call_timeout: float = setting(
        "GATEHOUSE_CLI_TIMEOUT",
        10.0,
        "Seconds the gatehouse command waits to connect to the auth replica, and for each answer",
        above=0,
        at_most=300,
    )
    blob_store: str = setting(
        "GATEHOUSE_CLI_BLOB_STORE",
        "database",
        "Where the HTTP tier keeps pictures (its GATEHOUSE_BLOB_STORE): with database, "
        "`gatehouse users delete` deletes the account's picture through the auth service; with "
        "s3 it names the object for the operator to delete",
        choices=("database", "s3"),
    )

    operator_tls_cert: str = setting(
        "GATEHOUSE_CLI_TLS_CERT",
        "",
        "PEM file of the operator's RPC client certificate (URI SAN"
        " spiffe://<GATEHOUSE_RPC_TRUST_DOMAIN>/operator), used with GATEHOUSE_RPC_TLS=mtls; mounted into the auth pods only",
    )
    operator_tls_key: str = setting(
        "GATEHOUSE_CLI_TLS_KEY", "", "PEM file of the key of GATEHOUSE_CLI_TLS_CERT"
    )

    def __post_init__(self) -> None:
        problems = bounds_problems(self)
        problem = trust_domain_problem(self.rpc_trust_domain)
        if problem:
            problems.append(f"GATEHOUSE_RPC_TRUST_DOMAIN: {problem}")
        problems += self.operator_socket_problems()
        problems += self.operator_tls_problems()
        if self.auth_address:
            try:
                parse_address(self.auth_address)
            except ValueError as exc:
                problems.append(f"GATEHOUSE_CLI_AUTH_ADDRESS is not valid: {exc}")
        report_problems(problems)

    def operator_tls_problems(self) -> list[str]:
        """With mtls, each file the command reads named by its setting (the CA, and the
        operator certificate instead of the replica's own), so a missing one is not reported as
        an unreadable operator certificate."""
        if not self.rpc_tls_on:
            return []
        problems = []
        for env, value, what in (
            ("GATEHOUSE_RPC_TLS_CA", self.rpc_tls_ca, "the CA of the RPC's mutual TLS"),
            ("GATEHOUSE_CLI_TLS_CERT", self.operator_tls_cert, "the operator certificate"),
            ("GATEHOUSE_CLI_TLS_KEY", self.operator_tls_key, "the operator certificate's key"),
        ):
            if not value:
                problems.append(f"{env} ({what}) is required with GATEHOUSE_RPC_TLS=mtls")
            elif not Path(value).is_file():
                problems.append(f"{env}: {value} is not a readable file")
        return problems

    def operator_tls(self) -> ClientTls | None:
        """How the command speaks mutual TLS to a replica, as the operator; None in plaintext."""
        if not self.rpc_tls_on:
            return None
        files = TlsFiles(
            Path(self.rpc_tls_ca), Path(self.operator_tls_cert), Path(self.operator_tls_key)
        )
        try:
            return ClientTls(client_context(files), self.rpc_tls_server_name)
        except (OSError, ssl.SSLError) as exc:
            raise BadConfiguration(
                [
                    f"cannot load the RPC's TLS files (GATEHOUSE_RPC_TLS_CA={self.rpc_tls_ca},"
                    f" GATEHOUSE_CLI_TLS_CERT={self.operator_tls_cert}, GATEHOUSE_CLI_TLS_KEY="
                    f"{self.operator_tls_key}): {exc}; each must be PEM, the key that of the"
                    " certificate"
                ]
            ) from None

    def replica_address(self, override: str | None = None) -> tuple[str, int]:
        """Where to call: `override` (--auth-address), else GATEHOUSE_CLI_AUTH_ADDRESS, else
        this pod's replica."""
        if override or self.auth_address:
            return parse_address(override or self.auth_address)
        return ("127.0.0.1" if self.host in _ANY_ADDRESS else self.host), self.port

    def operator_socket_to_call(self, override: str | None = None) -> str | None:
        """Without TLS, the replica's operator socket, unless an address is named: over TCP
        a replica in plaintext grants only the HTTP tier's calls."""
        if override or self.auth_address or self.rpc_tls_on or not self.operator_socket:
            return None
        return self.operator_socket


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` or `[v6 address]:port`; ValueError saying what is wrong."""
    host, separator, port = text.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    # A v6 address needs its brackets, and brackets hold nothing else.
    well_formed = _is_v6(host) if bracketed else not any(mark in host for mark in "[]:")
    if not (separator and host and well_formed and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"expected host:port or [v6 address]:port, got {text!r}")
    return host, int(port)


def _is_v6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text.partition("%")[0]), ipaddress.IPv6Address)
    except ValueError:
        return False


def load_cli_settings(settings_class: type[SettingsT]) -> SettingsT:
    """`settings_class` from the environment, or BadConfiguration (exit 2, one line each)."""
    try:
        return load_settings(settings_class)
    except ConfigError as exc:
        raise BadConfiguration(exc.problems) from None
