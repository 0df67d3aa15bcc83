"""JWT key records vouched for by an auth replica's RPC certificate.

etcd carries the public keys the HTTP tier verifies tokens with, but it is not what makes a key
trusted: anyone who can write the keys prefix (an etcd flaw, a stolen root password) could
otherwise plant a key and sign tokens for any user. With mutual TLS on the RPC, an auth replica
signs each record it publishes with its RPC server certificate's key, and an HTTP worker takes
a record only when that certificate was issued by GATEHOUSE_RPC_TLS_CA, is valid now and names
GATEHOUSE_AUTH_TLS_SERVER_NAME: the same proof of being an auth replica that every RPC call
already asks for. Without TLS (a mesh in front) there is no such proof, and the records are
taken as etcd gives them.

A record: `{"kid", "alg", "public_key", "attestation": {"certificate": PEM, "attested_at":
Unix seconds, "signature": base64url}}`; the signature covers CONTEXT, the kid, the time and
the public key's PEM. An attestation is good for MAX_AGE_SECONDS, and replicas renew theirs
after half of it: a record saved by someone who can read etcd and put back after the key was
withdrawn (a leaked key, the very reason to withdraw it) is refused a day later at most, not
for as long as the certificate is valid.
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

CONTEXT = b"gatehouse jwt key record v1\n"
ATTESTATION_FIELD = "attestation"
MAX_AGE_SECONDS = 24 * 3600
# An attestation dated this far ahead of the checker's clock is still taken (clock skew).
FUTURE_SKEW_SECONDS = 300


class AttestationRefused(ValueError):
    """A record whose attestation is missing or does not prove an auth replica wrote it."""


def _message(kid: str, attested_at: int, public_key_pem: str) -> bytes:
    return CONTEXT + f"{kid}\n{attested_at}\n{public_key_pem}".encode()


def _sign(private_key: Any, message: bytes) -> bytes:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(private_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return private_key.sign(message)
    raise ValueError(f"cannot sign with a {type(private_key).__name__}")


def _verify(public_key: Any, signature: bytes, message: bytes) -> None:
    """InvalidSignature (or AttestationRefused for a key type we do not sign with)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        public_key.verify(signature, message)
    else:
        raise AttestationRefused(f"its certificate has a {type(public_key).__name__}")


def attested_record(
    record: dict[str, str], cert_pem: bytes, key_pem: bytes, attested_at: int
) -> dict[str, Any]:
    """`record` with an attestation by the certificate `cert_pem` and its key `key_pem`."""
    private_key = serialization.load_pem_private_key(key_pem, password=None)
    signature = _sign(private_key, _message(record["kid"], attested_at, record["public_key"]))
    return {
        **record,
        ATTESTATION_FIELD: {
            "certificate": cert_pem.decode("ascii"),
            "attested_at": attested_at,
            "signature": base64.urlsafe_b64encode(signature).decode("ascii"),
        },
    }


# Attestation times past this (the year 36812) are no time at all: a float holds none past
# 1.8e308, and a record saying 10**400 once stopped every HTTP worker's key updates.
LATEST_ATTESTATION = 2**40


def attested_at(fields: dict[str, Any]) -> int | None:
    attestation = fields.get(ATTESTATION_FIELD)
    when = attestation.get("attested_at") if isinstance(attestation, dict) else None
    if not isinstance(when, int) or isinstance(when, bool):
        return None
    return when if 0 <= when <= LATEST_ATTESTATION else None


# A replica's tls.crt: its certificate and an intermediate or two. Each one more is a signature
# to verify on the event loop of every HTTP worker, for any record whoever writes etcd plants.
MAX_CHAIN_CERTIFICATES = 4
MAX_CHAIN_PEM_BYTES = 32 * 1024


def attesting_chain(fields: dict[str, Any]) -> list[x509.Certificate]:
    """The certificates a parsed record's attestation carries, the attesting one first (a
    tls.crt may hold its intermediates after it); empty when none, malformed, or longer than
    a replica's certificate file is."""
    attestation = fields.get(ATTESTATION_FIELD)
    if not isinstance(attestation, dict) or not isinstance(attestation.get("certificate"), str):
        return []
    pem = attestation["certificate"]
    if len(pem) > MAX_CHAIN_PEM_BYTES:
        return []
    try:
        chain = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return []
    return chain if len(chain) <= MAX_CHAIN_CERTIFICATES else []


@dataclass
class AttestationCheck:
    """What a published record must prove (with GATEHOUSE_RPC_TLS=mtls): asked by an HTTP
    worker of every record, and by a replica of its own before and after it publishes."""

    ca_path: Path
    server_name: str
    _ca_pem: bytes = b""
    _authorities: tuple[x509.Certificate, ...] = ()

    def authorities(self) -> tuple[x509.Certificate, ...]:
        """The CA file's certificates, read now and parsed again only when the file changed
        (it is read for each new set of records, so a rotated CA is followed); OSError or
        ValueError when it cannot be read."""
        pem = self.ca_path.read_bytes()
        if pem != self._ca_pem:
            self._authorities = tuple(x509.load_pem_x509_certificates(pem))
            self._ca_pem = pem
        return self._authorities

    def check(
        self,
        fields: dict[str, Any],
        authorities: tuple[x509.Certificate, ...],
        now: datetime.datetime | None = None,
    ) -> None:
        """AttestationRefused unless the parsed record `fields` is attested, within
        MAX_AGE_SECONDS, by a valid server certificate for the server name issued by one of
        `authorities` (directly, or through an intermediate sent with it)."""
        try:
            self._check(fields, authorities, now)
        except AttestationRefused:
            raise
        except Exception as exc:  # noqa: BLE001 -- whoever writes etcd writes the record
            # A certificate made to break its parser (x509.DuplicateExtension, say) is refused
            # like any other: the caller refuses the record, not its whole key set.
            raise AttestationRefused(
                f"its attestation cannot be read ({type(exc).__name__})"
            ) from None

    def _check(
        self,
        fields: dict[str, Any],
        authorities: tuple[x509.Certificate, ...],
        now: datetime.datetime | None,
    ) -> None:
        chain = attesting_chain(fields)
        when = attested_at(fields)
        if not chain or when is None:
            raise AttestationRefused("it carries no attestation by an auth replica's certificate")
        certificate = chain[0]
        now = now or datetime.datetime.now(datetime.UTC)
        age = now.timestamp() - when
        if not -FUTURE_SKEW_SECONDS <= age <= MAX_AGE_SECONDS:
            raise AttestationRefused(
                f"its attestation is {age:.0f} s old; replicas renew theirs every"
                f" {MAX_AGE_SECONDS // 2} s, and one older than {MAX_AGE_SECONDS} s is refused"
            )
        if not _valid_at(certificate, now) or not _a_server_certificate(certificate):
            raise AttestationRefused("its attesting certificate is no server certificate valid now")
        if not _issued_by_one_of(certificate, chain[1:], authorities, now):
            raise AttestationRefused(
                "its attesting certificate is not issued by GATEHOUSE_RPC_TLS_CA"
            )
        if not any(_name_matches(name, self.server_name) for name in _dns_names(certificate)):
            raise AttestationRefused(
                f"its attesting certificate does not name {self.server_name!r}"
                " (GATEHOUSE_AUTH_TLS_SERVER_NAME)"
            )
        try:
            signature = base64.urlsafe_b64decode(fields[ATTESTATION_FIELD].get("signature", ""))
            message = _message(fields["kid"], when, fields["public_key"])
            _verify(certificate.public_key(), signature, message)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            raise AttestationRefused("its attestation's signature does not verify") from None


def _valid_at(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    return certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc


def _a_server_certificate(certificate: x509.Certificate) -> bool:
    """Not a CA, and serverAuth among its extended key usages when it names any (as OpenSSL
    asks of the RPC's server certificates)."""
    extensions = certificate.extensions
    try:
        if extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        pass
    try:
        usages = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usages


def _issued_by_one_of(
    certificate: x509.Certificate,
    intermediates: list[x509.Certificate],
    authorities: tuple[x509.Certificate, ...],
    now: datetime.datetime,
) -> bool:
    trusted = [authority for authority in authorities if _valid_at(authority, now)]
    if any(_issued_by(certificate, authority) for authority in trusted):
        return True
    return any(
        _issued_by(certificate, intermediate)
        and _is_a_ca(intermediate)
        and _valid_at(intermediate, now)
        and any(_issued_by(intermediate, authority) for authority in trusted)
        for intermediate in intermediates
    )


def _is_a_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(certificate: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _dns_names(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return names.value.get_values_for_type(x509.DNSName)


def _name_matches(pattern: str, name: str) -> bool:
    """A SAN DNS name against the server name as TLS matches it: case-insensitive, and a
    leftmost `*` label standing for exactly one label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if not pattern.startswith("*."):
        return pattern == name
    first, _, rest = name.partition(".")
    return bool(first) and rest == pattern[2:]


def newer(certificate: x509.Certificate, than: x509.Certificate) -> bool:
    """Whether `certificate` was issued after `than` (ties broken by serial): replicas holding
    different certificates re-attest a record only with a newer one, so they never take turns."""
    return (certificate.not_valid_before_utc, certificate.serial_number) > (
        than.not_valid_before_utc,
        than.serial_number,
    )
