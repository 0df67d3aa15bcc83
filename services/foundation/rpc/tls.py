"""Mutual TLS on the auth RPC: the contexts of both ends, their reload, and the peer's identity.

Both ends load a CA (the only one trusted for the other end), their own certificate and key.
The server requires a client certificate from that CA; the client checks the server's
certificate against a configured name (the auth Service's DNS name), not the address it dials:
discovery records hold pod IPs, which certificates do not carry.

An identity is a certificate's URI SAN (`spiffe://<trust domain>/http`, `.../operator`, the
trust domain being GATEHOUSE_RPC_TRUST_DOMAIN): names in the certificate a CA issues on purpose,
unlike a CN, which many tools fill with anything. The trust domain tells apart deployments whose
certificates one issuer signs. A certificate without a URI SAN may carry its identity as a DNS
SAN under `.identity.invalid` (`http.gh-prod.prod.identity.invalid` is
`spiffe://gh-prod.prod/http`): tools that cannot write URI
SANs (Helm's genSignedCert) can write that, and no host name is ever under `.invalid`
(RFC 6761), so a server certificate never passes for a client identity by its host names.

Rotation: `ReloadingTls.step` re-reads the files; when their bytes changed it loads them into
the same SSLContext, so every connection opened afterwards (both ends) uses the new
certificate, while connections already open keep theirs until they close. A CA added to the CA
file is trusted at once; one removed from it stays trusted until the process restarts
(OpenSSL's trust store only grows). The bytes read are first loaded into a scratch context:
OpenSSL, given a certificate that does not match the key it holds, drops that key before it
reads the new one, so a set that fails to load (a certificate written before its key) would
leave the live context with no key at all, and every new handshake failing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

URI_SAN_KIND = "URI"
DNS_SAN_KIND = "DNS"
IDENTITY_DNS_SUFFIX = ".identity.invalid"
DEFAULT_TRUST_DOMAIN = "gatehouse"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA that signs the other end, and this end's certificate and key."""

    ca_path: Path
    cert_path: Path
    key_path: Path

    def read(self) -> TlsMaterial:
        return TlsMaterial(
            self.ca_path.read_bytes(), self.cert_path.read_bytes(), self.key_path.read_bytes()
        )


@dataclass(frozen=True)
class TlsMaterial:
    """The bytes of a TlsFiles, read once: what is checked is what is loaded."""

    ca: bytes
    cert: bytes
    key: bytes

    def digest(self) -> bytes:
        hasher = hashlib.sha256()
        for part in (self.ca, self.cert, self.key):
            hasher.update(part)
            hasher.update(b"\0")
        return hasher.digest()


def _base_context(purpose: ssl.Purpose) -> ssl.SSLContext:
    context = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """For the auth server: its certificate, and a client certificate from the CA required."""
    context = _empty_context(server=True)
    _load(context, files.read())
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """For a caller: its certificate, and the server's checked against the CA and the name
    passed as `server_hostname` when connecting."""
    context = _empty_context(server=False)
    _load(context, files.read())
    return context


def _empty_context(*, server: bool) -> ssl.SSLContext:
    if server:
        return _base_context(ssl.Purpose.CLIENT_AUTH)
    context = _base_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = True
    return context


def _load(context: ssl.SSLContext, material: TlsMaterial) -> None:
    with (
        _memory_file(material.ca) as ca,
        _memory_file(material.cert) as cert,
        _memory_file(material.key) as key,
    ):
        context.load_verify_locations(cafile=ca)
        context.load_cert_chain(cert, key)


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to `data` that no other process can see or change (a memfd), for OpenSSL's
    loaders, which read files only; keys never reach a disk."""
    fd = os.memfd_create("gatehouse-rpc-tls", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as out:
            out.write(data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


class ReloadingTls:
    """One SSLContext kept in step with its files (see the module docstring)."""

    def __init__(self, files: TlsFiles, *, server: bool) -> None:
        self.files = files
        self._server = server
        material = files.read()
        self._digest = material.digest()
        self.context = _empty_context(server=server)
        _load(self.context, material)
        self.reloads = 0

    async def step(self) -> None:
        """Reload when the files changed; a half-written set (a key not matching its
        certificate yet) is kept for the next step, the current one still in use: the bytes
        are tried in a scratch context first, and only what loaded there reaches the live one."""
        try:
            material = self.files.read()
        except OSError as exc:
            log.warning("cannot read the RPC TLS files (%s); keeping the loaded ones", exc)
            return
        digest = material.digest()
        if digest == self._digest:
            return
        try:
            _load(_empty_context(server=self._server), material)
        except (OSError, ssl.SSLError) as exc:
            log.warning("the RPC TLS files changed but do not load yet (%s); retrying", exc)
            return
        _load(self.context, material)
        self._digest = digest
        self.reloads += 1
        log.info("reloaded the RPC TLS certificate from %s", self.files.cert_path)


def peer_identity(peercert: dict[str, Any] | None) -> str | None:
    """The first URI SAN of a verified peer certificate (`getpeercert()`), else the identity
    its first DNS SAN under IDENTITY_DNS_SUFFIX names, if any."""
    if not peercert:
        return None
    names = peercert.get("subjectAltName", ())
    for kind, value in names:
        if kind == URI_SAN_KIND:
            return str(value)
    for kind, value in names:
        if kind == DNS_SAN_KIND and str(value).lower().endswith(IDENTITY_DNS_SUFFIX):
            return identity_of_dns_name(str(value).lower())
    return None


def identity_of_dns_name(name: str) -> str | None:
    """`<role>.<trust domain>.identity.invalid` -> `spiffe://<trust domain>/<role>`: the role is
    the first label, the trust domain all the others (it may hold dots: `gh-prod.prod`)."""
    role, _, trust_domain = name.removesuffix(IDENTITY_DNS_SUFFIX).partition(".")
    if not role or trust_domain_problem(trust_domain):
        return None
    return spiffe_id(trust_domain, role)


def spiffe_id(trust_domain: str, role: str) -> str:
    """The identity of `role` in `trust_domain`: `spiffe://<trust domain>/<role>`."""
    return f"spiffe://{trust_domain}/{role}"


def identity_dns_name(trust_domain: str, role: str) -> str:
    """The DNS SAN that stands for `spiffe_id(trust_domain, role)`."""
    return f"{role}.{trust_domain}{IDENTITY_DNS_SUFFIX}"


_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_MAX_TRUST_DOMAIN = 200


def trust_domain_problem(trust_domain: str) -> str | None:
    """What makes `trust_domain` unfit (lowercase DNS labels joined by dots), or None."""
    if not trust_domain or len(trust_domain) > _MAX_TRUST_DOMAIN:
        return f"must be 1 to {_MAX_TRUST_DOMAIN} characters, not {len(trust_domain)}"
    if not all(_LABEL.fullmatch(label) for label in trust_domain.split(".")):
        return f"{trust_domain!r} is not lowercase DNS labels (a-z, 0-9, inner '-') joined by dots"
    return None
