"""The Ed25519 public keys an HTTP worker verifies tokens with, indexed by key id.

A key comes from GATEHOUSE_JWT_PUBLIC_KEYS (PEM) or from a record an auth replica published
under GATEHOUSE_JWT_KEYS_PREFIX + kid (`{"kid","alg":"EdDSA","public_key"}`). Its ids are
computed from the key itself (services.foundation.jwk): the RFC 7638 thumbprint that tokens
carry now, and the legacy id that tokens signed before carry. A `KeySet` finds a key by either,
so a token costs one lookup and one signature check, whatever the number of keys. A published
record is taken only when its name (and its own `kid` member) is one of its key's ids: a record
filed under another key's id would make tokens with that id be checked against the wrong key.

A `KeySet` also renders the JWKS document of its keys once, when it is built
(`GET /.well-known/jwks.json`: services.http.jwks).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from services.foundation.jwk import legacy_kid, public_jwk, thumbprint_kid

_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


@dataclass(frozen=True, slots=True)
class HeldKey:
    key: Ed25519PublicKey
    kid: str  # the RFC 7638 thumbprint
    legacy_kid: str
    jwk: dict[str, str]


def held_key(key: Ed25519PublicKey) -> HeldKey:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = thumbprint_kid(raw)
    return HeldKey(key=key, kid=kid, legacy_kid=legacy_kid(raw), jwk=public_jwk(raw, kid))


class KeySet:
    """Keys by both of their ids; each key once, however many times it was given."""

    def __init__(self, keys: Iterable[HeldKey] = ()) -> None:
        distinct = {key.kid: key for key in keys}
        self._keys = tuple(distinct[kid] for kid in sorted(distinct))
        self._by_kid = {kid: key for key in self._keys for kid in (key.kid, key.legacy_kid)}
        self.kids = tuple(key.kid for key in self._keys)
        self.jwks_body = json.dumps(
            {"keys": [key.jwk for key in self._keys]}, separators=(",", ":")
        ).encode("ascii")

    def __len__(self) -> int:
        return len(self._keys)

    def find(self, kid: str) -> HeldKey | None:
        """The key whose thumbprint or legacy id is `kid`."""
        return self._by_kid.get(kid)

    def kids_lost_in(self, newer: KeySet) -> frozenset[str]:
        """The ids (thumbprints and legacy ids) that name a key here but no key, or another
        key, in `newer`: tokens verified under them must be verified again."""
        return frozenset(
            kid
            for kid, key in self._by_kid.items()
            if (kept := newer._by_kid.get(kid)) is None or kept.kid != key.kid
        )


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def parse_public_keys(pems: str) -> tuple[Ed25519PublicKey, ...]:
    """Every PEM block in `pems` (GATEHOUSE_JWT_PUBLIC_KEYS), or ValueError."""
    blocks = _PEM_BLOCK.findall(pems.encode("utf-8", "surrogateescape"))
    if pems.strip() and not blocks:
        raise ValueError(
            "it holds no '-----BEGIN PUBLIC KEY-----' block; "
            "set it to Ed25519 public keys in PEM, or leave it empty"
        )
    keys = []
    for number, block in enumerate(blocks, start=1):
        try:
            keys.append(load_public_key(block))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(
                f"key #{number} is not usable ({exc}); "
                "give Ed25519 public keys in PEM (SubjectPublicKeyInfo)"
            ) from exc
    return tuple(keys)


def parse_published_key(name: str, raw: bytes) -> tuple[HeldKey, dict[str, Any]]:
    """The key of the record `raw` published under the prefix + `name`, and the record's
    fields; ValueError when it is malformed or filed under an id that is not its key's."""
    try:
        fields = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    kid, alg, pem = fields.get("kid"), fields.get("alg"), fields.get("public_key")
    if not isinstance(kid, str) or not kid:
        raise ValueError("kid missing")
    if alg != "EdDSA":
        raise ValueError(f"alg is {alg!r}, only 'EdDSA' is accepted")
    if not isinstance(pem, str):
        raise ValueError("public_key missing")
    try:
        key = held_key(load_public_key(pem.encode()))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"public_key is not an Ed25519 public key in PEM ({exc})") from None
    own_ids = (key.kid, key.legacy_kid)
    if name not in own_ids or kid not in own_ids:
        raise ValueError(
            f"filed as {name!r} with kid {kid!r}, but its key's ids are {key.kid!r} "
            f"(thumbprint) and {key.legacy_kid!r} (legacy)"
        )
    return key, fields
