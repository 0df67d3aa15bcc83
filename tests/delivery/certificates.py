"""Checks of the certificates the chart generates: signed by their CA, naming a host."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa


def verifies(ca: x509.Certificate, leaf: x509.Certificate) -> None:
    key = ca.public_key()
    assert leaf.signature_hash_algorithm is not None
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(
            leaf.signature,
            leaf.tbs_certificate_bytes,
            padding.PKCS1v15(),
            leaf.signature_hash_algorithm,
        )
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(
            leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm)
        )


def covers(leaf: x509.Certificate, host: str) -> bool:
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    for name in names.get_values_for_type(x509.DNSName):
        if name == host or (
            name.startswith("*.") and host.split(".", 1)[1:] == [name[2:]] and "." in host
        ):
            return True
    return any(str(ip) == host for ip in names.get_values_for_type(x509.IPAddress)) or (
        host == "127.0.0.1"
        and ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    )
