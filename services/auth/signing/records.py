"""The public key records this process publishes: attested with its RPC server certificate
under mutual TLS (services.foundation.key_attestation), plain without.

The certificate and its key are read from their files at each publication, so a rotated
certificate is used from the next one on, and each attestation is checked as the HTTP tier
will check it before it is put (a read straddling a Secret's update can pair a new certificate
with the old key). A record already published is written again when it is not this key's, or
its attestation would not pass the HTTP tier's check (none, forged, broken, expired), or is
past half its life, or was made with an older certificate than this process holds: replicas
holding different certificates do not take turns rewriting it.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509

from services.auth.tokens import TokenIssuer
from services.foundation.key_attestation import (
    MAX_AGE_SECONDS,
    AttestationCheck,
    AttestationRefused,
    attested_at,
    attested_record,
    attesting_chain,
    newer,
)
from services.foundation.rpc.tls import TlsFiles
from services.foundation.rpc.tls_settings import RpcTlsSettings


class UnusableCertificate(RuntimeError):
    """This process's own attestation would be refused: its certificate and key files do not
    go together (read during a rotation), or the certificate is not one the HTTP tier takes."""


class KeyRecords:
    def __init__(
        self,
        tls_files: TlsFiles | None,
        server_name: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tls_files = tls_files
        self._check = AttestationCheck(tls_files.ca_path, server_name) if tls_files else None
        self._clock = clock

    def record(self, issuer: TokenIssuer) -> bytes:
        plain = issuer.public_key_record()[1]
        if self._tls_files is None or self._check is None:
            return plain
        material = self._tls_files.read()
        fields = attested_record(json.loads(plain), material.cert, material.key, int(self._clock()))
        try:
            self._check.check(fields, self._check.authorities(), self._now())
        except (AttestationRefused, OSError) as exc:
            raise UnusableCertificate(
                f"the RPC certificate cannot attest the JWT key records ({exc}); trying again"
                " at the next poll"
            ) from None
        return json.dumps(fields, sort_keys=True).encode("utf-8")

    def outdated(self, stored: bytes | None, issuer: TokenIssuer) -> bool:
        """Whether `stored`, the record published under the issuer's kid, must be written again."""
        plain = issuer.public_key_record()[1]
        if self._tls_files is None or self._check is None or stored is None:
            return stored != plain
        try:
            fields: Any = json.loads(stored)
        except (ValueError, RecursionError):
            return True
        ours = json.loads(plain)
        if not isinstance(fields, dict) or any(fields.get(k) != ours[k] for k in ours):
            return True
        try:
            self._check.check(fields, self._check.authorities(), self._now())
        except (AttestationRefused, OSError):
            return True
        when, chain = attested_at(fields), attesting_chain(fields)
        if when is None or not chain or self._clock() - when > MAX_AGE_SECONDS / 2:
            return True
        own = x509.load_pem_x509_certificate(self._tls_files.read().cert)
        return newer(own, chain[0])

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)


def key_records(settings: RpcTlsSettings) -> KeyRecords:
    """A replica's records (its settings name its certificate whenever mTLS is on). The
    `gatehouse` command run without the replica's certificate publishes a plain record, which
    the replicas holding the key attest at their next poll."""
    attesting = settings.rpc_tls_on and settings.rpc_tls_cert and settings.rpc_tls_key
    return KeyRecords(settings.rpc_tls_files() if attesting else None, settings.rpc_tls_server_name)
