"""Key records attested by an auth replica's RPC certificate (services.foundation.key_attestation)
and published by the auth side (services.auth.signing.records)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devstack.certs import CertificateAuthority, IssuedCertificate
from services.auth.signing.records import KeyRecords
from services.auth.tokens import TokenIssuer
from services.foundation.key_attestation import (
    AttestationCheck,
    AttestationRefused,
    attested_record,
)
from services.foundation.rpc.tls import TlsFiles
from services.http.public_keys import parse_published_key

SERVER_NAME = "gatehouse-auth"


def fields_of(record: bytes) -> dict[str, object]:
    return parse_published_key(json.loads(record)["kid"], record)[1]


def files(issued: IssuedCertificate) -> TlsFiles:
    return TlsFiles(issued.ca_path, issued.cert_path, issued.key_path)


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "ca")


@pytest.fixture
def check(authority: CertificateAuthority) -> AttestationCheck:
    return AttestationCheck(authority.cert_path, SERVER_NAME)


def test_a_replica_certificate_vouches_for_its_record(
    authority: CertificateAuthority, check: AttestationCheck
) -> None:
    issuer = TokenIssuer(Ed25519PrivateKey.generate(), 3600)
    record = KeyRecords(files(authority.issue("auth", hosts=(SERVER_NAME,)))).record(issuer)
    check.check(fields_of(record), check.authorities())


@pytest.mark.parametrize(
    "forgery", ["plain", "other CA", "other name", "other key", "bad signature", "expired"]
)
def test_what_no_auth_replica_vouched_for_is_refused(
    authority: CertificateAuthority, check: AttestationCheck, tmp_path: Path, forgery: str
) -> None:
    issuer = TokenIssuer(Ed25519PrivateKey.generate(), 3600)
    plain = json.loads(issuer.public_key_record()[1])
    replica = authority.issue("auth", hosts=(SERVER_NAME,))
    signer = {
        "other CA": CertificateAuthority(tmp_path / "rogue").issue("auth", hosts=(SERVER_NAME,)),
        "other name": authority.issue("http", hosts=("gatehouse-http",)),
    }.get(forgery, replica)
    fields = attested_record(plain, signer.cert_path.read_bytes(), signer.key_path.read_bytes())
    now = None
    if forgery == "plain":
        fields = plain
    elif forgery == "other key":  # an attestation copied onto another key's record
        fields["public_key"] = json.loads(
            TokenIssuer(Ed25519PrivateKey.generate(), 3600).public_key_record()[1]
        )["public_key"]
    elif forgery == "bad signature":
        fields["attestation"]["signature"] = "AAAA"
    elif forgery == "expired":
        now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=400)
    with pytest.raises(AttestationRefused):
        check.check(fields, check.authorities(), now)


def test_a_record_is_written_again_only_for_a_newer_certificate(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    """Two replicas with different certificates agree on one record instead of taking turns."""
    issuer = TokenIssuer(Ed25519PrivateKey.generate(), 3600)
    older = files(authority.issue("auth-1", hosts=(SERVER_NAME,)))
    newer = files(authority.issue("auth-2", hosts=(SERVER_NAME,)))
    first, second = sorted(
        (older, newer),
        key=lambda f: (lambda c: (c.not_valid_before_utc, c.serial_number))(
            x509.load_pem_x509_certificate(f.cert_path.read_bytes())
        ),
    )
    by_first, by_second = KeyRecords(first), KeyRecords(second)
    assert by_first.outdated(None, issuer) and by_first.outdated(
        issuer.public_key_record()[1], issuer
    )
    written = by_first.record(issuer)
    assert not by_first.outdated(written, issuer)
    assert by_second.outdated(written, issuer)  # a newer certificate re-attests
    rewritten = by_second.record(issuer)
    assert not by_first.outdated(rewritten, issuer) and not by_second.outdated(rewritten, issuer)
    other_key = TokenIssuer(Ed25519PrivateKey.generate(), 3600)
    assert by_second.outdated(rewritten, other_key)
