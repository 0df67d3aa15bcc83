"""Ed25519 session tokens, their published public key, and forgeries a pinned decode refuses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.auth.tokens import (
    TokenIssuer,
    generate_private_key_pem,
    load_private_key,
    new_session_id,
)
from services.foundation.config import InvalidSecret

TTL_SECONDS = 3600


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer(load_private_key(generate_private_key_pem()), TTL_SECONDS)


def test_issued_token_carries_the_claims(issuer: TokenIssuer) -> None:
    before = int(time.time())
    issued = issuer.issue(1234567890123, "session-1")
    header = jwt.get_unverified_header(issued.token)
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert header["alg"] == "EdDSA"
    assert header["kid"] == issuer.kid
    assert claims["sub"] == "1234567890123"
    assert claims["sid"] == "session-1"
    assert (claims["iss"], claims["aud"]) == ("gatehouse", "gatehouse")
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + TTL_SECONDS
    assert issued.expires_at == datetime.fromtimestamp(claims["exp"], UTC)


def test_kid_is_the_rfc_7638_thumbprint_of_the_public_key() -> None:
    pem = generate_private_key_pem()
    raw_public_key = (
        load_private_key(pem)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    # RFC 7638, section 3: SHA-256 over the required members in lexical order, no whitespace.
    x = base64.urlsafe_b64encode(raw_public_key).rstrip(b"=").decode()
    canonical = f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'.encode()
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    issuer = TokenIssuer(load_private_key(pem), TTL_SECONDS)
    assert issuer.kid == expected
    assert jwt.get_unverified_header(issuer.issue(1, "s").token)["kid"] == expected
    assert TokenIssuer(load_private_key(pem), 60).kid == expected  # the same key on another replica
    assert TokenIssuer(load_private_key(generate_private_key_pem()), TTL_SECONDS).kid != expected


def test_published_key_verifies_tokens_and_pinned_decode_refuses_forgeries(
    issuer: TokenIssuer,
) -> None:
    kid, published = issuer.public_key_record()
    record = json.loads(published)
    assert record["kid"] == kid == issuer.kid
    assert record["alg"] == "EdDSA"

    public_key: str = record["public_key"]  # the PEM, as the HTTP tier reads it
    token = issuer.issue(42, "session-42").token
    claims = jwt.decode(token, public_key, algorithms=["EdDSA"], audience="gatehouse")
    assert (claims["sub"], claims["sid"]) == ("42", "session-42")

    forged_claims = {
        "sub": "1",
        "sid": "stolen",
        "iat": int(time.time()),
        "exp": int(time.time()) + 60,
    }
    unsigned = _forge(forged_claims, "none", lambda _: b"")
    hmac_with_public_key = _forge(
        forged_claims,
        "HS256",
        lambda signing_input: hmac.new(public_key.encode(), signing_input, hashlib.sha256).digest(),
    )
    for forgery in (unsigned, hmac_with_public_key):
        with pytest.raises(jwt.InvalidAlgorithmError):
            jwt.decode(forgery, public_key, algorithms=["EdDSA"])

    other_issuer = TokenIssuer(load_private_key(generate_private_key_pem()), TTL_SECONDS)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(other_issuer.issue(42, "session-42").token, public_key, algorithms=["EdDSA"])


def test_issuer_and_audience_are_settings() -> None:
    issued = TokenIssuer(
        load_private_key(generate_private_key_pem()),
        TTL_SECONDS,
        issuer="gatehouse-staging",
        audience="shop",
    ).issue(7, "session-7")
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert (claims["iss"], claims["aud"]) == ("gatehouse-staging", "shop")


def test_new_session_ids_are_random_and_url_safe() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(session_id) == 22 and "=" not in session_id for session_id in ids)


def test_other_key_types_are_refused_with_a_hint() -> None:
    for key in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1())):
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        with pytest.raises(InvalidSecret, match=r"signed with Ed25519.*openssl genpkey"):
            load_private_key(pem)


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "not a key",
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n",
        generate_private_key_pem().replace("PRIVATE", "PUBLIC"),
    ],
)
def test_unreadable_keys_are_refused_without_echoing_them(pem: str) -> None:
    with pytest.raises(InvalidSecret, match="not an unencrypted PEM private key") as refused:
        load_private_key(pem)
    assert "c2VjcmV0" not in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


def test_encrypted_key_is_refused() -> None:
    pem = (
        load_private_key(generate_private_key_pem())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
        .decode()
    )
    with pytest.raises(InvalidSecret, match="unencrypted"):
        load_private_key(pem)


def _forge(claims: dict[str, object], algorithm: str, sign: Callable[[bytes], bytes]) -> str:
    header = _b64(json.dumps({"alg": algorithm, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    return f"{header}.{payload}.{_b64(sign(signing_input))}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
