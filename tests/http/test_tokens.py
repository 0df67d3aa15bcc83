"""Local session token verification: keys by kid, extra PEM keys, rejections, the verified cache."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.http.tokens import InvalidToken, Session, TokenVerifier, parse_public_keys


def public_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def published(kid: str, key: Ed25519PrivateKey) -> bytes:
    return json.dumps({"kid": kid, "alg": "EdDSA", "public_key": public_pem(key)}).encode()


def sign(key: Ed25519PrivateKey, *, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, object] = {"sub": "42", "sid": "session-1", "iat": now, "exp": now + 600}
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": kid})


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def verifier(key: Ed25519PrivateKey) -> TokenVerifier:
    verifier = TokenVerifier()
    verifier.replace_published({"k1": published("k1", key)})
    return verifier


def test_a_good_token_gives_its_session(verifier: TokenVerifier, key: Ed25519PrivateKey) -> None:
    session = verifier.verify(sign(key))
    assert session.user_id == 42
    assert session.session_id == "session-1"
    assert isinstance(session, Session)


def test_an_expired_token_is_rejected(verifier: TokenVerifier, key: Ed25519PrivateKey) -> None:
    now = int(time.time())
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(sign(key, iat=now - 7200, exp=now - 3600))


def test_a_cached_token_is_rejected_once_it_expires(
    verifier: TokenVerifier, key: Ed25519PrivateKey
) -> None:
    token = sign(key)
    verifier.verify(token)
    # What the cache holds for a token that has since expired:
    verifier._verified[token] = Session(
        user_id=42, session_id="session-1", expires_at=time.time() - 60
    )
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token)


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "sid"])
def test_every_required_claim_must_be_present(
    verifier: TokenVerifier, key: Ed25519PrivateKey, missing: str
) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify(sign(key, **{missing: None}))


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "gatehouse", "aud": "gatehouse"},
        {"iss": "gatehouse", "aud": ["another-service", "gatehouse"]},
        {},  # issued before tokens carried iss and aud: accepted until it expires
    ],
)
def test_tokens_of_this_issuer_and_audience_are_accepted(
    verifier: TokenVerifier, key: Ed25519PrivateKey, claims: dict[str, Any]
) -> None:
    assert verifier.verify(sign(key, **claims)).session_id == "session-1"


@pytest.mark.parametrize(
    ("claims", "problem"),
    [
        ({"iss": "gatehouse-staging", "aud": "gatehouse"}, "issuer"),
        ({"iss": "", "aud": "gatehouse"}, "issuer"),
        ({"iss": "gatehouse", "aud": "another-service"}, "audience"),
        ({"iss": "gatehouse", "aud": ["another-service"]}, "audience"),
        ({"iss": "gatehouse", "aud": []}, "audience"),
        ({"aud": "another-service"}, "only one"),
        ({"iss": "gatehouse"}, "only one"),  # no release issued one claim without the other
        ({"aud": "gatehouse"}, "only one"),
    ],
)
def test_tokens_of_another_issuer_or_audience_are_rejected(
    verifier: TokenVerifier, key: Ed25519PrivateKey, claims: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidToken, match=problem):
        verifier.verify(sign(key, **claims))


def test_only_tokens_without_the_claims_count_as_issued_before_them(
    verifier: TokenVerifier, key: Ed25519PrivateKey
) -> None:
    assert verifier.verify(sign(key)).issued_before_claims
    assert not verifier.verify(sign(key, iss="gatehouse", aud="gatehouse")).issued_before_claims


def test_the_expected_issuer_and_audience_are_settings(key: Ed25519PrivateKey) -> None:
    verifier = TokenVerifier(issuer="gatehouse-staging", audience="shop")
    verifier.replace_published({"k1": published("k1", key)})
    assert verifier.verify(sign(key, iss="gatehouse-staging", aud="shop")).user_id == 42
    with pytest.raises(InvalidToken):
        verifier.verify(sign(key, iss="gatehouse", aud="gatehouse"))


@pytest.mark.parametrize("sub", ["abc", "-1", "0", " 42", "1" * 30])
def test_a_sub_that_is_not_a_user_id_is_rejected(
    verifier: TokenVerifier, key: Ed25519PrivateKey, sub: str
) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify(sign(key, sub=sub))


def test_other_algorithms_are_refused(verifier: TokenVerifier) -> None:
    now = int(time.time())
    claims = {"sub": "42", "sid": "s", "iat": now, "exp": now + 600}
    hs256 = jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(InvalidToken, match="alg"):
        verifier.verify(hs256)
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": "k1"})
    with pytest.raises(InvalidToken):
        verifier.verify(unsigned)


def test_an_unknown_kid_is_rejected(verifier: TokenVerifier, key: Ed25519PrivateKey) -> None:
    with pytest.raises(InvalidToken, match="not a known signing key"):
        verifier.verify(sign(key, kid="rotated-away"))


def test_a_signature_by_another_key_is_rejected(verifier: TokenVerifier) -> None:
    with pytest.raises(InvalidToken, match="Signature"):
        verifier.verify(sign(Ed25519PrivateKey.generate(), kid="k1"))


@pytest.mark.parametrize(
    "garbage",
    ["", "garbage", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9.e30.", "x" * 10_000, "\udcff.a.b"],
)
def test_garbage_is_rejected(verifier: TokenVerifier, garbage: str) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify(garbage)


def test_extra_pem_keys_verify_tokens_whatever_their_kid(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    verifier = TokenVerifier(parse_public_keys(public_pem(other) + public_pem(key)))
    assert verifier.verify(sign(key, kid="anything")).user_id == 42
    assert verifier.verify(sign(other, kid="else")).user_id == 42
    with pytest.raises(InvalidToken):
        verifier.verify(sign(Ed25519PrivateKey.generate(), kid="anything"))


def test_a_withdrawn_key_no_longer_verifies_tokens_it_signed(
    verifier: TokenVerifier, key: Ed25519PrivateKey
) -> None:
    token = sign(key)
    verifier.verify(token)
    verifier.replace_published({})
    with pytest.raises(InvalidToken):
        verifier.verify(token)


def test_malformed_published_keys_are_skipped(
    key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = TokenVerifier()
    rsa_like = json.dumps(
        {"kid": "bad-alg", "alg": "RS256", "public_key": public_pem(key)}
    ).encode()
    verifier.replace_published(
        {
            "broken": b"{not json",
            "bad-alg": rsa_like,
            "no-pem": b'{"kid":"x","alg":"EdDSA"}',
            "k1": published("k1", key),
        }
    )
    assert verifier.key_count == 1
    assert verifier.verify(sign(key)).user_id == 42
    assert sum("malformed published JWT key" in r.getMessage() for r in caplog.records) == 3


def test_bad_extra_keys_fail_at_start() -> None:
    with pytest.raises(ValueError, match="no '-----BEGIN PUBLIC KEY-----' block"):
        parse_public_keys("not a pem")
    with pytest.raises(ValueError, match="key #1"):
        parse_public_keys("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert parse_public_keys("") == ()
