"""Ed25519 public keys as JSON Web Keys (RFC 8037), and their key ids.

A key's id is its RFC 7638 JWK thumbprint: base64url(SHA-256) of the canonical JSON of the
required members, `{"crv":"Ed25519","kty":"OKP","x":...}` (sorted, no whitespace). Tokens
signed before that carry the legacy id, the first 16 characters of
base64url(SHA-256(raw public key)); verifiers accept both for the same key.
"""

from __future__ import annotations

import base64
import hashlib
import json

_LEGACY_KID_LENGTH = 16


def base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(raw_public_key: bytes, kid: str | None = None) -> dict[str, str]:
    """The public JWK of a 32-byte Ed25519 key: never a private member."""
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": base64url(raw_public_key)}
    if kid is not None:
        jwk |= {"kid": kid, "alg": "EdDSA", "use": "sig"}
    return jwk


def thumbprint_kid(raw_public_key: bytes) -> str:
    """The RFC 7638 thumbprint (SHA-256, base64url) of the key's JWK."""
    canonical = json.dumps(public_jwk(raw_public_key), sort_keys=True, separators=(",", ":"))
    return base64url(hashlib.sha256(canonical.encode("ascii")).digest())


def legacy_kid(raw_public_key: bytes) -> str:
    """The key id tokens carried before thumbprints: accepted, never issued."""
    return base64url(hashlib.sha256(raw_public_key).digest())[:_LEGACY_KID_LENGTH]
