"""A throwaway certificate authority and the leaf certificates it signs, as PEM files.

Local stacks and tests use it wherever TLS is on (MariaDB, Redis, and later the RPC and etcd),
so what runs locally verifies certificates the way a cluster does. Keys are ECDSA P-256: fast to
generate and accepted by OpenSSL, MariaDB, Redis and etcd alike.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=30)
# Certificates start being valid a little in the past: a peer whose clock is slightly behind
# must not see a certificate that is "not yet valid".
_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf certificate and its key, both PEM files, and the CA file that verifies it."""

    cert_path: Path
    key_path: Path
    ca_path: Path


class CertificateAuthority:
    """A self-signed CA whose certificate and key live in `folder` (created if missing)."""

    def __init__(self, folder: Path, *, name: str = "Gatehouse devstack CA") -> None:
        self.folder = folder
        self.cert_path = folder / "ca.crt"
        self._key_path = folder / "ca.key"
        if self.cert_path.exists() and self._key_path.exists():
            self._key = _load_key(self._key_path)
            self._cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            return
        folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        _write_key(self._key_path, self._key)
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        *,
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
        client: bool = False,
        uris: tuple[str, ...] = (),
    ) -> IssuedCertificate:
        """A leaf certificate for `name` (its CN), valid for `hosts` (IP addresses or DNS
        names) as a server, and also as a client when `client`; `uris` are URI SANs (an RPC
        caller's identity). Written as `name`.crt/.key."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [*_alt_names(hosts), *(x509.UniformResourceIdentifier(uri) for uri in uris)]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        issued = IssuedCertificate(
            cert_path=self.folder / f"{name}.crt",
            key_path=self.folder / f"{name}.key",
            ca_path=self.cert_path,
        )
        _write_key(issued.key_path, key)
        issued.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return issued


def _alt_names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(pem)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RuntimeError(f"{path} is not an EC private key; delete the folder to start afresh")
    return key
