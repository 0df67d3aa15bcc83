"""Key records attested by an auth replica's RPC certificate (services.foundation.key_attestation)
and published by the auth side (services.auth.signing.records)."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devstack.certs import CertificateAuthority, IssuedCertificate
from services.auth.signing.records import KeyRecords, UnusableCertificate
from services.auth.tokens import TokenIssuer
from services.foundation import key_attestation
from services.foundation.key_attestation import (
    MAX_AGE_SECONDS,
    AttestationCheck,
    AttestationRefused,
    attested_record,
)
from services.foundation.rpc.tls import TlsFiles
from services.http.public_keys import parse_published_key

SERVER_NAME = "gatehouse-auth"


def fields_of(record: bytes) -> dict[str, Any]:
    return parse_published_key(json.loads(record)["kid"], record)[1]


def files(issued: IssuedCertificate) -> TlsFiles:
    return TlsFiles(issued.ca_path, issued.cert_path, issued.key_path)


def plain_fields(issuer: TokenIssuer) -> dict[str, str]:
    fields: dict[str, str] = json.loads(issuer.public_key_record()[1])
    return fields


def new_issuer() -> TokenIssuer:
    return TokenIssuer(Ed25519PrivateKey.generate(), 3600)


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "ca")


@pytest.fixture
def check(authority: CertificateAuthority) -> AttestationCheck:
    return AttestationCheck(authority.cert_path, SERVER_NAME)


def test_a_replica_certificate_vouches_for_its_record(
    authority: CertificateAuthority, check: AttestationCheck
) -> None:
    replica = files(authority.issue("auth", hosts=(SERVER_NAME,)))
    record = KeyRecords(replica, SERVER_NAME).record(new_issuer())
    check.check(fields_of(record), check.authorities())


@pytest.mark.parametrize("name", ["GATEHOUSE-AUTH", "*.svc"])
def test_names_match_as_tls_matches_them(
    authority: CertificateAuthority, name: str, tmp_path: Path
) -> None:
    """Case-insensitive, and a wildcard for one label, as the RPC's own handshake accepts."""
    replica = files(authority.issue("auth", hosts=(name,)))
    record = KeyRecords(replica, "gatehouse-auth.svc" if "*" in name else SERVER_NAME).record(
        new_issuer()
    )
    check = AttestationCheck(
        authority.cert_path, "GATEHOUSE-auth.svc" if "*" in name else "gatehouse-auth"
    )
    check.check(fields_of(record), check.authorities())


FORGERIES = [
    "plain",
    "other CA",
    "other name",
    "other key",
    "other kid",
    "bad signature",
    "time past any clock",
    "a chain too long",
    "expired certificate",
    "stale attestation",
    "client certificate",
    "the CA itself",
]


@pytest.mark.parametrize("forgery", FORGERIES)
def test_what_no_auth_replica_vouched_for_is_refused(
    authority: CertificateAuthority, check: AttestationCheck, tmp_path: Path, forgery: str
) -> None:
    plain = plain_fields(new_issuer())
    replica = authority.issue("auth", hosts=(SERVER_NAME,))
    cert, key = replica.cert_path.read_bytes(), replica.key_path.read_bytes()
    if forgery == "other CA":
        rogue = CertificateAuthority(tmp_path / "rogue").issue("auth", hosts=(SERVER_NAME,))
        cert, key = rogue.cert_path.read_bytes(), rogue.key_path.read_bytes()
    elif forgery == "other name":
        http = authority.issue("http", hosts=("gatehouse-http",))
        cert, key = http.cert_path.read_bytes(), http.key_path.read_bytes()
    elif forgery == "the CA itself":
        cert = authority.cert_path.read_bytes()
        key = (authority.cert_path.parent / "ca.key").read_bytes()
    now = datetime.datetime.now(datetime.UTC)
    when = int(now.timestamp())
    if forgery == "stale attestation":  # saved, and put back once the key was withdrawn
        when -= MAX_AGE_SECONDS + 60
    fields = attested_record(plain, cert, key, when)
    if forgery == "plain":
        fields = dict(plain)
    elif forgery == "other key":  # an attestation copied onto another key's record
        fields["public_key"] = plain_fields(new_issuer())["public_key"]
    elif forgery == "other kid":
        fields["kid"] = "x" + fields["kid"]
    elif forgery == "bad signature":
        fields["attestation"]["signature"] = "AAAA"
    elif forgery == "a chain too long":  # each one more, a signature checked on every worker
        fields["attestation"]["certificate"] *= 5
    elif forgery == "time past any clock":  # no float holds it: OverflowError, once
        fields["attestation"]["attested_at"] = 10**400
    elif forgery == "expired certificate":
        now += datetime.timedelta(days=400)
        fields = attested_record(plain, cert, key, int(now.timestamp()))
    elif forgery == "client certificate":
        fields = client_attested(authority, plain, when)
    with pytest.raises(AttestationRefused):
        check.check(fields, check.authorities(), now)


def test_a_certificate_that_breaks_its_parser_is_refused_not_raised(
    authority: CertificateAuthority, check: AttestationCheck, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cryptography raises x509.DuplicateExtension (no ValueError) for a certificate with an
    extension twice, which whoever writes etcd can put in a record: the caller must get a
    refusal of that record, not an error that stops its whole key set."""
    replica = files(authority.issue("auth", hosts=(SERVER_NAME,)))
    fields = fields_of(KeyRecords(replica, SERVER_NAME).record(new_issuer()))

    def duplicated(certificate: x509.Certificate) -> list[str]:
        raise x509.DuplicateExtension(
            "an extension twice", x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME
        )

    monkeypatch.setattr(key_attestation, "_dns_names", duplicated)
    with pytest.raises(AttestationRefused, match="cannot be read"):
        check.check(fields, check.authorities())


def client_attested(
    authority: CertificateAuthority, plain: dict[str, str], when: int
) -> dict[str, Any]:
    """Attested by a certificate naming the server, but for client authentication only."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key(
        (authority.cert_path.parent / "ca.key").read_bytes(), password=None
    )
    ca_cert = x509.load_pem_x509_certificate(authority.cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return attested_record(plain, cert.public_bytes(serialization.Encoding.PEM), key_pem, when)


def test_a_record_is_written_again_only_when_it_would_be_refused_or_grows_old(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    """Two replicas with different certificates agree on one record instead of taking turns;
    a forged or broken attestation is replaced, and one past half its life renewed."""
    issuer = new_issuer()
    one = files(authority.issue("auth-1", hosts=(SERVER_NAME,)))
    two = files(authority.issue("auth-2", hosts=(SERVER_NAME,)))

    def issued(tls: TlsFiles) -> tuple[datetime.datetime, int]:
        cert = x509.load_pem_x509_certificate(tls.cert_path.read_bytes())
        return cert.not_valid_before_utc, cert.serial_number

    first, second = sorted((one, two), key=issued)
    by_first, by_second = KeyRecords(first, SERVER_NAME), KeyRecords(second, SERVER_NAME)
    assert by_first.outdated(None, issuer)
    assert by_first.outdated(issuer.public_key_record()[1], issuer)
    written = by_first.record(issuer)
    assert not by_first.outdated(written, issuer)
    assert by_second.outdated(written, issuer)  # a newer certificate re-attests
    rewritten = by_second.record(issuer)
    assert not by_first.outdated(rewritten, issuer) and not by_second.outdated(rewritten, issuer)
    assert by_second.outdated(rewritten, new_issuer())
    forged = json.loads(rewritten)
    forged["attestation"]["signature"] = "AAAA"
    assert by_first.outdated(json.dumps(forged).encode(), issuer)
    later = KeyRecords(first, SERVER_NAME, clock=lambda: time.time() + MAX_AGE_SECONDS / 2 + 60)
    assert later.outdated(rewritten, issuer)


def test_a_certificate_read_with_another_key_attests_nothing(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    """A read straddling a Secret's update can pair the new certificate with the old key."""
    one = authority.issue("auth-1", hosts=(SERVER_NAME,))
    two = authority.issue("auth-2", hosts=(SERVER_NAME,))
    torn = TlsFiles(one.ca_path, one.cert_path, two.key_path)
    with pytest.raises(UnusableCertificate):
        KeyRecords(torn, SERVER_NAME).record(new_issuer())


def test_a_certificate_sent_with_its_intermediate_is_followed_to_the_ca(
    authority: CertificateAuthority, check: AttestationCheck
) -> None:
    """A tls.crt holding the leaf and an intermediate, against a CA file of the root only (as
    the RPC's own handshake accepts it)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root_key = serialization.load_pem_private_key(
        (authority.cert_path.parent / "ca.key").read_bytes(), password=None
    )
    root = x509.load_pem_x509_certificate(authority.cert_path.read_bytes())
    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str, issuer: x509.Name, key: Any, signer: Any, *, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    middle_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    middle = certificate("intermediate", root.subject, middle_key, root_key, ca=True)
    leaf = certificate("auth", middle.subject, leaf_key, middle_key, ca=False)
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, middle))
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fields = attested_record(plain_fields(new_issuer()), chain, key_pem, int(now.timestamp()))
    check.check(fields, check.authorities())
    alone = attested_record(
        plain_fields(new_issuer()),
        leaf.public_bytes(serialization.Encoding.PEM),
        key_pem,
        int(now.timestamp()),
    )
    with pytest.raises(AttestationRefused):
        check.check(alone, check.authorities())
