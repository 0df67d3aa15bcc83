"""Helpers of the token verification tests: real Ed25519 keys, their published records, tokens
they sign, and a count of the signature checks a verifier makes."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.http import tokens as tokens_module
from tests.http.gateway import kid_of


def public_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def record(key: Ed25519PrivateKey, kid: str) -> bytes:
    return json.dumps({"kid": kid, "alg": "EdDSA", "public_key": public_pem(key)}).encode()


def published(*keys: Ed25519PrivateKey) -> dict[str, bytes]:
    """The prefix's values once auth replicas published `keys`, under their thumbprint kids."""
    return {kid_of(key): record(key, kid_of(key)) for key in keys}


def sign(key: Ed25519PrivateKey, *, kid: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, object] = {"sub": "42", "sid": "session-1", "iat": now, "exp": now + 600}
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": kid or kid_of(key)})


class CountedDecodes:
    """Records the key of every signature check the verifier makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[Ed25519PublicKey] = []
        decode = tokens_module._decode

        def counted(token: str, key: Ed25519PublicKey) -> dict[str, Any]:
            self.keys.append(key)
            return decode(token, key)

        monkeypatch.setattr(tokens_module, "_decode", counted)


def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
