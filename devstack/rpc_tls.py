"""Certificates for the auth RPC's mutual TLS in a local stack (GATEHOUSE_RPC_TLS=mtls).

One throwaway CA (devstack.certs) signs the auth replicas' server certificate (SAN: the
server name the callers check, and the loopback addresses), the HTTP tier's client certificate
and the operator's (the `gatehouse` CLI), each client's identity a URI SAN
in the default trust domain (services/auth/roles.py), as in the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devstack.certs import CertificateAuthority, IssuedCertificate
from services.auth.roles import HTTP, OPERATOR, Roles
from services.foundation.rpc.client import ClientTls
from services.foundation.rpc.tls import TlsFiles, client_context

SERVER_NAME = "gatehouse-auth"


@dataclass(frozen=True)
class RpcCertificates:
    server: IssuedCertificate
    http: IssuedCertificate
    operator: IssuedCertificate

    @classmethod
    def issue(cls, folder: Path) -> RpcCertificates:
        """Issue a fresh set (reissuing in place is a rotation) from the CA in `folder`."""
        authority = CertificateAuthority(folder, name="Gatehouse devstack RPC CA")
        roles = Roles()
        return cls(
            server=issue_server(authority),
            http=authority.issue("rpc-http", hosts=(), client=True, uris=(roles.identity(HTTP),)),
            operator=authority.issue(
                "rpc-operator", hosts=(), client=True, uris=(roles.identity(OPERATOR),)
            ),
        )

    def auth_env(self) -> dict[str, str]:
        """An auth replica's settings; the operator's certificate too, for the CLI beside it."""
        return {
            **_tls_env(self.server),
            "GATEHOUSE_CLI_TLS_CERT": str(self.operator.cert_path),
            "GATEHOUSE_CLI_TLS_KEY": str(self.operator.key_path),
        }

    def http_env(self) -> dict[str, str]:
        return _tls_env(self.http)

    def client_tls(self, operator: bool = False) -> ClientTls:
        """How a test client speaks to a replica: with the HTTP tier's certificate, or the
        operator's."""
        issued = self.operator if operator else self.http
        files = TlsFiles(issued.ca_path, issued.cert_path, issued.key_path)
        return ClientTls(client_context(files), SERVER_NAME)


def issue_server(authority: CertificateAuthority) -> IssuedCertificate:
    return authority.issue("rpc-server", hosts=(SERVER_NAME, "127.0.0.1", "localhost"))


def _tls_env(issued: IssuedCertificate) -> dict[str, str]:
    return {
        "GATEHOUSE_RPC_TLS": "mtls",
        "GATEHOUSE_RPC_TLS_CA": str(issued.ca_path),
        "GATEHOUSE_RPC_TLS_CERT": str(issued.cert_path),
        "GATEHOUSE_RPC_TLS_KEY": str(issued.key_path),
        "GATEHOUSE_AUTH_TLS_SERVER_NAME": SERVER_NAME,
    }
