"""The public key records this process publishes: attested with its RPC server certificate
under mutual TLS (services.foundation.key_attestation), plain without.

The certificate and its key are read from their files at each publication, so a rotated
certificate is used from the next one on. A record already published is written again only
when it is not this key's, carries no attestation, or is attested by an older certificate than
this process holds: replicas holding different certificates do not take turns rewriting it.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography import x509

from services.auth.tokens import TokenIssuer
from services.foundation.key_attestation import attested_record, attesting_certificate, newer
from services.foundation.rpc.tls import TlsFiles
from services.foundation.rpc.tls_settings import RpcTlsSettings


class KeyRecords:
    def __init__(self, tls_files: TlsFiles | None) -> None:
        self._tls_files = tls_files

    def record(self, issuer: TokenIssuer) -> bytes:
        plain = issuer.public_key_record()[1]
        if self._tls_files is None:
            return plain
        material = self._tls_files.read()
        fields = attested_record(json.loads(plain), material.cert, material.key)
        return json.dumps(fields, sort_keys=True).encode("utf-8")

    def outdated(self, stored: bytes | None, issuer: TokenIssuer) -> bool:
        """Whether `stored`, the record published under the issuer's kid, must be written again."""
        plain = issuer.public_key_record()[1]
        if self._tls_files is None or stored is None:
            return stored != plain
        try:
            fields: Any = json.loads(stored)
        except (ValueError, RecursionError):
            return True
        if (
            not isinstance(fields, dict)
            or fields.get("public_key") != json.loads(plain)["public_key"]
        ):
            return True
        published_by = attesting_certificate(fields)
        if published_by is None:
            return True
        return newer(x509.load_pem_x509_certificate(self._tls_files.read().cert), published_by)


def key_records(settings: RpcTlsSettings) -> KeyRecords:
    """A replica's records (its settings name its certificate whenever mTLS is on). The
    `gatehouse` command run without the replica's certificate publishes a plain record, which
    the replicas holding the key attest at their next poll."""
    attesting = settings.rpc_tls_on and settings.rpc_tls_cert and settings.rpc_tls_key
    return KeyRecords(settings.rpc_tls_files() if attesting else None)
