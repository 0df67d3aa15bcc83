"""JWT key records vouched for by an auth replica's RPC certificate.

etcd carries the public keys the HTTP tier verifies tokens with, but it is not what makes a key
trusted: anyone who can write the keys prefix (an etcd flaw, a stolen root password) could
otherwise plant a key and sign tokens for any user. With mutual TLS on the RPC, an auth replica
signs each record it publishes with its RPC server certificate's key, and an HTTP worker takes
a record only when that certificate was issued by GATEHOUSE_RPC_TLS_CA, is valid now and names
GATEHOUSE_AUTH_TLS_SERVER_NAME: the same proof of being an auth replica that every RPC call
already asks for. Without TLS (a mesh in front) there is no such proof, and the records are
taken as etcd gives them.

A record: `{"kid", "alg", "public_key", "attestation": {"certificate": PEM, "signature":
base64url}}`; the signature covers CONTEXT + the public key's PEM.
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


class AttestationRefused(ValueError):
    """A record whose attestation is missing or does not prove an auth replica wrote it."""


def _message(public_key_pem: str) -> bytes:
    return CONTEXT + public_key_pem.encode("utf-8")


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


def attested_record(record: dict[str, str], cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    """`record` with an attestation by the certificate `cert_pem` and its key `key_pem`."""
    private_key = serialization.load_pem_private_key(key_pem, password=None)
    signature = _sign(private_key, _message(record["public_key"]))
    return {
        **record,
        ATTESTATION_FIELD: {
            "certificate": cert_pem.decode("ascii"),
            "signature": base64.urlsafe_b64encode(signature).decode("ascii"),
        },
    }


def attesting_certificate(fields: dict[str, Any]) -> x509.Certificate | None:
    """The certificate a parsed record's attestation names, or None (none, or malformed)."""
    attestation = fields.get(ATTESTATION_FIELD)
    if not isinstance(attestation, dict) or not isinstance(attestation.get("certificate"), str):
        return None
    try:
        return x509.load_pem_x509_certificate(attestation["certificate"].encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None


@dataclass(frozen=True)
class AttestationCheck:
    """What an HTTP worker asks of a published record (with GATEHOUSE_RPC_TLS=mtls)."""

    ca_path: Path
    server_name: str

    def authorities(self) -> list[x509.Certificate]:
        """The CA file's certificates, read now (it is re-read for each new set of records, so
        a rotated CA is followed)."""
        return x509.load_pem_x509_certificates(self.ca_path.read_bytes())

    def check(
        self,
        fields: dict[str, Any],
        authorities: list[x509.Certificate],
        now: datetime.datetime | None = None,
    ) -> None:
        """AttestationRefused unless the parsed record `fields` is attested by a valid
        certificate for the server name, issued by one of `authorities`."""
        certificate = attesting_certificate(fields)
        if certificate is None:
            raise AttestationRefused("it carries no attestation by an auth replica's certificate")
        now = now or datetime.datetime.now(datetime.UTC)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise AttestationRefused("its attesting certificate is not valid now")
        if not any(_issued_by(certificate, authority) for authority in authorities):
            raise AttestationRefused(
                "its attesting certificate is not issued by GATEHOUSE_RPC_TLS_CA"
            )
        if self.server_name not in _dns_names(certificate):
            raise AttestationRefused(
                f"its attesting certificate does not name {self.server_name!r}"
                " (GATEHOUSE_AUTH_TLS_SERVER_NAME)"
            )
        try:
            signature = base64.urlsafe_b64decode(fields[ATTESTATION_FIELD].get("signature", ""))
            _verify(certificate.public_key(), signature, _message(fields["public_key"]))
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            raise AttestationRefused("its attestation's signature does not verify") from None


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


def newer(certificate: x509.Certificate, than: x509.Certificate) -> bool:
    """Whether `certificate` was issued after `than` (ties broken by serial): replicas holding
    different certificates re-attest a record only with a newer one, so they never take turns."""
    return (certificate.not_valid_before_utc, certificate.serial_number) > (
        than.not_valid_before_utc,
        than.serial_number,
    )
