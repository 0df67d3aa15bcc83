"""The RPC's TLS settings, the same names in both tiers (each sets its own files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.foundation.config import setting
from services.foundation.rpc.tls import DEFAULT_TRUST_DOMAIN, TlsFiles, trust_domain_problem

PLAINTEXT = "plaintext"
MUTUAL_TLS = "mtls"


@dataclass(frozen=True, kw_only=True)
class RpcTlsSettings:
    """Part of each tier's settings: how the auth RPC is protected."""

    rpc_tls: str = setting(
        "GATEHOUSE_RPC_TLS",
        PLAINTEXT,
        "mtls: the auth RPC runs over mutual TLS (the server requires a client certificate "
        "from GATEHOUSE_RPC_TLS_CA and authorizes each method by its identity); plaintext: "
        "no TLS, for use behind a mesh doing mTLS: callers over TCP may make the HTTP tier's "
        "calls only, the operator's come over GATEHOUSE_OPERATOR_SOCKET",
        choices=(PLAINTEXT, MUTUAL_TLS),
    )
    rpc_tls_ca: str = setting(
        "GATEHOUSE_RPC_TLS_CA",
        "",
        "PEM file of the CA that signs the other end's RPC certificates (with mtls)",
    )
    rpc_tls_cert: str = setting(
        "GATEHOUSE_RPC_TLS_CERT",
        "",
        "PEM file of this process's RPC certificate (with mtls); re-read when it changes",
    )
    rpc_tls_key: str = setting(
        "GATEHOUSE_RPC_TLS_KEY",
        "",
        "PEM file of the key of GATEHOUSE_RPC_TLS_CERT (with mtls); re-read when it changes",
    )
    rpc_trust_domain: str = setting(
        "GATEHOUSE_RPC_TRUST_DOMAIN",
        DEFAULT_TRUST_DOMAIN,
        "Trust domain of the RPC identities (lowercase DNS-like labels, e.g. <release>.<namespace>):"
        " the auth service grants a role only to spiffe://<trust domain>/http or /operator (or"
        " the DNS SAN <role>.<trust domain>.identity.invalid); give each deployment its own",
    )
    rpc_tls_server_name: str = setting(
        "GATEHOUSE_AUTH_TLS_SERVER_NAME",
        "gatehouse-auth",
        "DNS name every auth replica's certificate carries (its SAN; the auth Service's name); "
        "callers check it instead of the pod address they dial",
    )
    rpc_tls_reload_interval: float = setting(
        "GATEHOUSE_RPC_TLS_RELOAD_INTERVAL",
        10.0,
        "Seconds between checks of the RPC TLS files for a rotated certificate",
        at_least=0.1,
        at_most=3600,
    )

    @property
    def rpc_tls_on(self) -> bool:
        return self.rpc_tls == MUTUAL_TLS

    def rpc_tls_files(self) -> TlsFiles:
        return TlsFiles(Path(self.rpc_tls_ca), Path(self.rpc_tls_cert), Path(self.rpc_tls_key))

    def rpc_tls_problems(self) -> list[str]:
        """What is wrong with the TLS settings (for the tier's __post_init__)."""
        problem = trust_domain_problem(self.rpc_trust_domain)
        problems = [f"GATEHOUSE_RPC_TRUST_DOMAIN: {problem}"] if problem else []
        if not self.rpc_tls_on:
            return problems
        for env, value in (
            ("GATEHOUSE_RPC_TLS_CA", self.rpc_tls_ca),
            ("GATEHOUSE_RPC_TLS_CERT", self.rpc_tls_cert),
            ("GATEHOUSE_RPC_TLS_KEY", self.rpc_tls_key),
        ):
            if not value:
                problems.append(f"{env} is required with GATEHOUSE_RPC_TLS=mtls")
            elif not Path(value).is_file():
                problems.append(f"{env}: {value} is not a readable file")
        if not self.rpc_tls_server_name:
            problems.append(
                "GATEHOUSE_AUTH_TLS_SERVER_NAME is required with GATEHOUSE_RPC_TLS=mtls"
            )
        return problems
