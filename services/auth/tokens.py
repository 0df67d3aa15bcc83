"""Session tokens: JWTs signed with Ed25519 (EdDSA), and the public key that verifies them.

The HTTP tier verifies tokens with the public keys published in etcd under
GATEHOUSE_JWT_KEYS_PREFIX + kid, so it never holds a secret. The records
(services.auth.signing.etcd_records) are put without a lease: a token must stay verifiable
after the replica that issued it is gone.

The kid is the key's RFC 7638 thumbprint (services.foundation.jwk). Releases before it used
the legacy kid (a 16-character hash prefix) in tokens and record names; verifiers index every
key under both, so the upgrade logs nobody out.

Every token names its issuer and audience (`iss`, `aud`: GATEHOUSE_TOKEN_ISSUER and
GATEHOUSE_TOKEN_AUDIENCE, which the HTTP tier checks with the same defaults).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.foundation.config import InvalidSecret
from services.foundation.jwk import thumbprint_kid

ALGORITHM = "EdDSA"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime  # UTC


class TokenIssuer:
    """Signs session tokens with one Ed25519 private key, valid for `ttl_seconds` (at least 1)."""

    def __init__(
        self,
        private_key: Ed25519PrivateKey,
        ttl_seconds: int,
        *,
        issuer: str = "gatehouse",
        audience: str = "gatehouse",
    ) -> None:
        self._issuer = issuer
        self._audience = audience
        self._private_key = private_key
        self._ttl_seconds = ttl_seconds
        public_key = self._private_key.public_key()
        self._public_key_pem = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
        raw_public_key = public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._kid = thumbprint_kid(raw_public_key)

    @property
    def kid(self) -> str:
        """Key id in every token's header: the RFC 7638 thumbprint of the public key."""
        return self._kid

    def issue(
        self, user_id: int, session_id: str, *, expires_by: float | None = None
    ) -> IssuedToken:
        """A token for the session; `expires_by` (Unix seconds) shortens its life to end then
        at the latest (a key about to retire must not sign a token that outlives it)."""
        issued_at = int(time.time())
        expires_at = issued_at + self._ttl_seconds
        if expires_by is not None:
            expires_at = max(issued_at + 1, min(expires_at, int(expires_by)))
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(user_id),
            "sid": session_id,
            "iat": issued_at,
            "exp": expires_at,
        }
        token = jwt.encode(
            claims, self._private_key, algorithm=ALGORITHM, headers={"kid": self.kid}
        )
        return IssuedToken(token=token, expires_at=datetime.fromtimestamp(expires_at, UTC))

    def public_key_record(self) -> tuple[str, bytes]:
        """(kid, JSON record) to publish under GATEHOUSE_JWT_KEYS_PREFIX + kid."""
        record = {"kid": self.kid, "alg": ALGORITHM, "public_key": self._public_key_pem}
        return self.kid, json.dumps(record, sort_keys=True).encode("utf-8")


def new_session_id() -> str:
    return secrets.token_urlsafe(16)


def load_private_key(pem: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in `pem` (GATEHOUSE_JWT_PRIVATE_KEY); InvalidSecret, never
    quoting the key, when it is not one."""
    try:
        key = serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # `from None`: the parser's message could quote the key material.
        raise InvalidSecret(
            "not an unencrypted PEM private key; generate one with "
            "`openssl genpkey -algorithm ed25519`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidSecret(
            f"it holds a key of type {type(key).__name__}, but tokens are signed with Ed25519;"
            " generate one with `openssl genpkey -algorithm ed25519`"
        )
    return key


def generate_private_key_pem() -> str:
    """A new Ed25519 private key as unencrypted PKCS#8 PEM, for dev tooling and tests."""
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode("ascii")
    )
