"""Local session token verification: keys by kid, extra PEM keys, rejections (the cache of
verified tokens: test_verified_tokens.py)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devstack.certs import CertificateAuthority
from services.auth.signing.records import KeyRecords
from services.auth.tokens import TokenIssuer
from services.foundation.key_attestation import AttestationCheck
from services.foundation.rpc.tls import TlsFiles
from services.http import tokens as tokens_module
from services.http.public_keys import parse_public_keys
from services.http.tokens import InvalidToken, Session, TokenVerifier, UnknownKeyId
from tests.http.gateway import kid_of, legacy_kid_of
from tests.http.token_support import (
    CountedDecodes,
    public_pem,
    published,
    raw_public,
    record,
    sign,
)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def verifier(key: Ed25519PrivateKey) -> TokenVerifier:
    verifier = TokenVerifier()
    verifier.replace_published(published(key))
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
    verifier.replace_published(published(key))
    assert verifier.verify(sign(key, iss="gatehouse-staging", aud="shop")).user_id == 42
    with pytest.raises(InvalidToken):
        verifier.verify(sign(key, iss="gatehouse", aud="gatehouse"))


@pytest.mark.parametrize("sub", ["abc", "-1", "0", " 42", "1" * 30])
def test_a_sub_that_is_not_a_user_id_is_rejected(
    verifier: TokenVerifier, key: Ed25519PrivateKey, sub: str
) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify(sign(key, sub=sub))


def test_other_algorithms_are_refused(verifier: TokenVerifier, key: Ed25519PrivateKey) -> None:
    now = int(time.time())
    claims = {"sub": "42", "sid": "s", "iat": now, "exp": now + 600}
    hs256 = jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"kid": kid_of(key)})
    with pytest.raises(InvalidToken, match="alg"):
        verifier.verify(hs256)
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": kid_of(key)})
    with pytest.raises(InvalidToken):
        verifier.verify(unsigned)


def test_an_unknown_kid_is_rejected(verifier: TokenVerifier, key: Ed25519PrivateKey) -> None:
    with pytest.raises(InvalidToken, match="not a known signing key"):
        verifier.verify(sign(key, kid="rotated-away"))


def test_a_signature_by_another_key_is_rejected(
    verifier: TokenVerifier, key: Ed25519PrivateKey
) -> None:
    with pytest.raises(InvalidToken, match="Signature"):
        verifier.verify(sign(Ed25519PrivateKey.generate(), kid=kid_of(key)))


@pytest.mark.parametrize(
    "garbage",
    ["", "garbage", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9.e30.", "x" * 10_000, "\udcff.a.b"],
)
def test_garbage_is_rejected(verifier: TokenVerifier, garbage: str) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify(garbage)


def test_extra_pem_keys_verify_tokens_by_their_thumbprint_and_legacy_kids(
    key: Ed25519PrivateKey,
) -> None:
    other = Ed25519PrivateKey.generate()
    verifier = TokenVerifier(parse_public_keys(public_pem(other) + public_pem(key)))
    assert verifier.verify(sign(key)).user_id == 42
    assert verifier.verify(sign(other, kid=legacy_kid_of(other))).user_id == 42
    with pytest.raises(UnknownKeyId):
        verifier.verify(sign(key, kid="anything"))  # no trying every key
    with pytest.raises(UnknownKeyId):
        verifier.verify(sign(Ed25519PrivateKey.generate()))


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
            "too-deep": b"[" * 100_000,  # past the JSON parser's recursion limit
            **published(key),
        }
    )
    assert verifier.key_count == 1
    assert verifier.verify(sign(key)).user_id == 42
    assert sum("published JWT key" in r.getMessage() for r in caplog.records) == 4


def test_a_flood_of_malformed_published_keys_logs_a_few_lines_not_one_each(
    key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = TokenVerifier()
    flood = {f"junk-{number}": b"{not json" for number in range(1000)}
    verifier.replace_published({**flood, **published(key)})
    assert verifier.key_count == 1
    assert verifier.verify(sign(key)).user_id == 42
    lines = [r.getMessage() for r in caplog.records if "published JWT key" in r.getMessage()]
    assert len(lines) == tokens_module.REFUSED_RECORDS_LOGGED + 1, len(lines)
    assert "ignoring 995 more published JWT keys" in lines[-1]


def test_bad_extra_keys_fail_at_start() -> None:
    with pytest.raises(ValueError, match="no '-----BEGIN PUBLIC KEY-----' block"):
        parse_public_keys("not a pem")
    with pytest.raises(ValueError, match="key #1"):
        parse_public_keys("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert parse_public_keys("") == ()


def test_a_legacy_kid_token_is_verified_by_the_one_key_it_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Many keys held, published (under thumbprints, as upgraded replicas file them) and extra.
    # The token's key sorts last, so a verifier trying keys in turn would check others first.
    *others, key = sorted((Ed25519PrivateKey.generate() for _ in range(6)), key=kid_of)
    verifier = TokenVerifier(parse_public_keys("".join(public_pem(o) for o in others[:3])))
    verifier.replace_published(published(*others[3:], key))
    decodes = CountedDecodes(monkeypatch)
    # A token signed before the upgrade: the same private key, the legacy kid.
    token = sign(key, kid=legacy_kid_of(key))
    assert verifier.verify(token).user_id == 42
    assert [raw_public(checked) for checked in decodes.keys] == [raw_public(key)]


def test_records_of_a_mixed_fleet_verify_both_kinds_of_token(key: Ed25519PrivateKey) -> None:
    # An old replica files the key under its legacy kid, a new one under its thumbprint.
    verifier = TokenVerifier()
    for values in (
        {legacy_kid_of(key): record(key, legacy_kid_of(key))},
        published(key),
        {legacy_kid_of(key): record(key, legacy_kid_of(key)), **published(key)},
    ):
        verifier.replace_published(values)
        assert verifier.keys.kids == (kid_of(key),)
        assert verifier.verify(sign(key, kid=legacy_kid_of(key), sid="old")).session_id == "old"
        assert verifier.verify(sign(key, sid="new")).session_id == "new"


def test_a_token_without_a_kid_is_refused_even_by_extra_keys(key: Ed25519PrivateKey) -> None:
    verifier = TokenVerifier(parse_public_keys(public_pem(key)))
    now = int(time.time())
    claims = {"sub": "42", "sid": "s", "iat": now, "exp": now + 600}
    with pytest.raises(InvalidToken, match="no key id") as refused:
        verifier.verify(jwt.encode(claims, key, algorithm="EdDSA"))
    assert not isinstance(refused.value, UnknownKeyId)  # no point reading etcd again


@pytest.mark.parametrize("filed_as", ["name", "kid member"])
def test_a_record_filed_under_another_keys_kid_is_refused_with_one_log_line(
    key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture, filed_as: str
) -> None:
    impostor = Ed25519PrivateKey.generate()
    # The impostor's record claims the kid of `key`, by its etcd name or by its kid member.
    misfiled = (
        {kid_of(key): record(impostor, kid_of(impostor))}
        if filed_as == "name"
        else {kid_of(impostor): record(impostor, kid_of(key))}
    )
    verifier = TokenVerifier()
    for _ in range(5):  # every watch event delivers the whole set again
        verifier.replace_published(misfiled)
    assert verifier.key_count == 0
    with pytest.raises(UnknownKeyId):
        verifier.verify(sign(impostor, kid=kid_of(key)))
    refusals = [r.getMessage() for r in caplog.records if "published JWT key" in r.getMessage()]
    assert len(refusals) == 1 and "(thumbprint)" in refusals[0], refusals


def test_the_jwks_lists_every_held_key_once_by_thumbprint_with_public_members_only(
    key: Ed25519PrivateKey,
) -> None:
    extra = Ed25519PrivateKey.generate()
    # `key` is both published (twice: by an old and a new replica) and given as an extra key.
    verifier = TokenVerifier(parse_public_keys(public_pem(extra) + public_pem(key)))
    verifier.replace_published(
        {legacy_kid_of(key): record(key, legacy_kid_of(key)), **published(key)}
    )
    listed = json.loads(verifier.keys.jwks_body)
    assert set(listed) == {"keys"}
    expected = {
        kid_of(held): {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": base64.urlsafe_b64encode(raw_public(held)).rstrip(b"=").decode(),
            "kid": kid_of(held),
            "alg": "EdDSA",
            "use": "sig",
        }
        for held in (key, extra)
    }
    assert sorted(listed["keys"], key=lambda jwk: jwk["kid"]) == sorted(
        expected.values(), key=lambda jwk: jwk["kid"]
    )
    assert verifier.keys.kids == tuple(sorted(expected))


def test_a_record_that_breaks_the_attestation_check_is_refused_alone(
    key: Ed25519PrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever can write the keys prefix could plant a record the check raised an error on
    other than a refusal (an attestation time of 10**400: OverflowError). The whole key set was
    then left as it was at every change: a withdrawn key verified on, a new one was never
    taken. Such a record is refused, and the rest of the set applies."""
    authority = CertificateAuthority(tmp_path / "ca")
    replica = authority.issue("auth", hosts=("gatehouse-auth",))
    verifier = TokenVerifier(attestation=AttestationCheck(authority.cert_path, "gatehouse-auth"))
    tls = TlsFiles(replica.ca_path, replica.cert_path, replica.key_path)
    withdrawn, taken = Ed25519PrivateKey.generate(), key
    verifier.replace_published(
        {kid_of(withdrawn): KeyRecords(tls, "gatehouse-auth").record(TokenIssuer(withdrawn, 60))}
    )
    verifier.verify(sign(withdrawn))
    poison = json.loads(KeyRecords(tls, "gatehouse-auth").record(TokenIssuer(taken, 60)))
    poison["attestation"]["attested_at"] = 10**400
    planted = Ed25519PrivateKey.generate()
    verifier.replace_published(
        {
            kid_of(taken): KeyRecords(tls, "gatehouse-auth").record(TokenIssuer(taken, 60)),
            kid_of(planted): json.dumps(poison).encode(),
        }
    )
    verifier.verify(sign(taken))
    with pytest.raises(InvalidToken):
        verifier.verify(sign(withdrawn))

    parse = tokens_module.parse_published_key

    def breaks_on_x(name: str, raw: bytes) -> Any:
        if name == "x":
            raise RuntimeError("a parser broken in a way nobody foresaw")
        return parse(name, raw)

    monkeypatch.setattr(tokens_module, "parse_published_key", breaks_on_x)
    verifier.replace_published({"x": b"{}"})  # `taken` withdrawn beside a record that breaks
    with pytest.raises(InvalidToken):
        verifier.verify(sign(taken))


def test_with_mutual_tls_only_records_an_auth_replica_vouched_for_verify_tokens(
    key: Ed25519PrivateKey, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key planted in etcd by whoever can write there signs nothing; the replica's own
    record, attested by its RPC certificate, does. A kid taken attested stays taken while its
    record is rewritten plain (a replica of the release before, during an upgrade), and not once
    it was withdrawn."""
    authority = CertificateAuthority(tmp_path / "ca")
    replica = authority.issue("auth", hosts=("gatehouse-auth",))
    verifier = TokenVerifier(attestation=AttestationCheck(authority.cert_path, "gatehouse-auth"))
    planted = Ed25519PrivateKey.generate()
    verifier.replace_published(published(planted))
    with pytest.raises(InvalidToken):
        verifier.verify(sign(planted))
    assert "carries no attestation" in caplog.text
    tls = TlsFiles(replica.ca_path, replica.cert_path, replica.key_path)
    attested = KeyRecords(tls, "gatehouse-auth").record(TokenIssuer(key, 3600))
    verifier.replace_published({kid_of(key): attested, **published(planted)})
    verifier.verify(sign(key))
    with pytest.raises(InvalidToken):
        verifier.verify(sign(planted))
    verifier.replace_published(published(key))  # rewritten plain: still the same key
    verifier.verify(sign(key))
    verifier.replace_published({})
    verifier.replace_published(published(key))  # withdrawn, then planted again
    with pytest.raises(InvalidToken):
        verifier.verify(sign(key))
