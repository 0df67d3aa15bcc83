"""The cache of verified tokens: bounded by its setting, only verified tokens, expiry on every
use, and only a withdrawn key's tokens forgotten when the key set changes."""

from __future__ import annotations

import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from services.http.public_keys import HeldKey, KeySet, held_key, parse_public_keys
from services.http.tokens import CLOCK_SKEW_SECONDS, InvalidToken, TokenVerifier, UnknownKeyId
from services.http.verified_tokens import CACHED_TOKEN_MAX_CHARS, HITS_PER_COUNT
from tests.http.gateway import legacy_kid_of
from tests.http.token_support import CountedDecodes, public_pem, published, record, sign


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def verifier_of(key: Ed25519PrivateKey, **options: Any) -> TokenVerifier:
    """A verifier with `key` published."""
    verifier = TokenVerifier(**options)
    verifier.replace_published(published(key))
    return verifier


def drops(reason: str) -> float:
    value = REGISTRY.get_sample_value("gatehouse_http_token_cache_drops_total", {"reason": reason})
    return value or 0.0


def test_the_size_setting_bounds_the_cache_and_the_oldest_token_makes_room(
    key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = verifier_of(key, cache_size=3)
    tokens = [sign(key, sid=f"session-{number}") for number in range(4)]
    evicted_before = drops("evicted")
    for token in tokens:
        verifier.verify(token)
    assert verifier.cached_count == 3
    assert drops("evicted") == evicted_before + 1
    decodes = CountedDecodes(monkeypatch)
    for token in tokens[1:]:
        verifier.verify(token)
    assert decodes.keys == []  # the three newest: no signature check
    assert verifier.verify(tokens[0]).session_id == "session-0"
    assert len(decodes.keys) == 1  # the oldest was evicted: checked again


@pytest.mark.parametrize(
    ("cache_size", "sid"),
    [
        (0, "session-1"),  # a size of 0 turns the cache off
        (10, "s" * CACHED_TOKEN_MAX_CHARS),  # a token too long to be kept
    ],
)
def test_a_token_the_cache_does_not_take_is_checked_every_time(
    key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch, cache_size: int, sid: str
) -> None:
    verifier = verifier_of(key, cache_size=cache_size)
    token = sign(key, sid=sid)
    decodes = CountedDecodes(monkeypatch)
    for _ in range(3):
        assert verifier.verify(token).session_id == sid
    assert len(decodes.keys) == 3
    assert verifier.cached_count == 0


def test_a_tampered_token_never_enters_the_cache(
    key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = sign(key, sid="mine")
    verifier = verifier_of(key)
    assert verifier.verify(good).session_id == "mine"
    header, _, signature = good.split(".")
    # Another session's claims under the good token's signature.
    stolen_claims = sign(key, sid="theirs").split(".")[1]
    tampered = f"{header}.{stolen_claims}.{signature}"
    decodes = CountedDecodes(monkeypatch)
    for _ in range(2):
        with pytest.raises(InvalidToken, match="Signature"):
            verifier.verify(tampered)
    assert len(decodes.keys) == 2  # checked every time: never remembered
    assert verifier.cached_count == 1
    assert verifier.verify(good).session_id == "mine"


def test_a_cached_token_is_refused_once_it_expires(key: Ed25519PrivateKey) -> None:
    now = time.time()
    clock = [now]
    verifier = verifier_of(key, clock=lambda: clock[0])
    token = sign(key, exp=int(now) + 60)
    assert verifier.verify(token).user_id == 42
    assert verifier.cached_count == 1
    expired_before = drops("expired")
    clock[0] = now + 120  # past exp and the clock skew allowed
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token)
    assert verifier.cached_count == 0
    assert drops("expired") == expired_before + 1


def test_a_cached_token_with_a_fractional_exp_expires_when_an_uncached_one_would(
    key: Ed25519PrivateKey,
) -> None:
    # PyJWT's check truncates exp: uncached, this token is refused from exp's whole second on.
    whole_second = int(time.time()) + 60
    clock = [time.time()]
    verifier = verifier_of(key, clock=lambda: clock[0])
    token = sign(key, exp=whole_second + 0.99)
    assert verifier.verify(token).user_id == 42
    clock[0] = whole_second + CLOCK_SKEW_SECONDS + 0.5
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token)


def test_a_published_key_keeps_the_cache_and_a_withdrawn_one_takes_only_its_tokens(
    key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rotation: the next key is published, signs, and the old one retires.
    verifier = verifier_of(key)
    old_token = sign(key, sid="old")
    verifier.verify(old_token)
    following = Ed25519PrivateKey.generate()
    decodes = CountedDecodes(monkeypatch)
    verifier.replace_published(published(key, following))
    assert verifier.verify(old_token).session_id == "old"
    assert decodes.keys == []  # still cached after a key was added
    new_token = sign(following, sid="new")
    verifier.verify(new_token)
    withdrawn_before = drops("key_withdrawn")
    verifier.replace_published(published(following))  # the old key retired
    assert drops("key_withdrawn") == withdrawn_before + 1
    assert verifier.cached_count == 1
    with pytest.raises(UnknownKeyId):
        verifier.verify(old_token)  # cached, yet refused: its key is gone
    checks = len(decodes.keys)
    assert verifier.verify(new_token).session_id == "new"
    assert len(decodes.keys) == checks  # the new key's token stayed cached


def test_a_token_cached_under_a_legacy_kid_goes_with_its_key(
    key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = Ed25519PrivateKey.generate()
    verifier = TokenVerifier()
    # An old replica files its key under the legacy kid, a new one under the thumbprint.
    verifier.replace_published({legacy_kid_of(key): record(key, legacy_kid_of(key))})
    legacy_token = sign(key, kid=legacy_kid_of(key), sid="legacy")
    other_token = sign(other, sid="other")
    verifier.replace_published(
        {legacy_kid_of(key): record(key, legacy_kid_of(key)), **published(other)}
    )
    verifier.verify(legacy_token)
    verifier.verify(other_token)
    decodes = CountedDecodes(monkeypatch)
    verifier.replace_published(published(key, other))  # the same key, now by its thumbprint
    verifier.verify(legacy_token)
    assert decodes.keys == []  # the key is still held: its tokens stay
    verifier.replace_published(published(other))
    with pytest.raises(UnknownKeyId):
        verifier.verify(legacy_token)
    verifier.verify(other_token)
    assert decodes.keys == []


def test_tokens_of_the_extra_keys_outlive_the_withdrawal_of_every_published_key(
    key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = Ed25519PrivateKey.generate()
    # `key` is both published and given in GATEHOUSE_JWT_PUBLIC_KEYS.
    verifier = TokenVerifier(parse_public_keys(public_pem(extra) + public_pem(key)))
    published_too = Ed25519PrivateKey.generate()
    verifier.replace_published(published(key, published_too))
    tokens = [sign(extra), sign(key, kid=legacy_kid_of(key)), sign(published_too)]
    for token in tokens:
        verifier.verify(token)
    decodes = CountedDecodes(monkeypatch)
    verifier.replace_published({})
    verifier.verify(tokens[0])
    verifier.verify(tokens[1])
    assert decodes.keys == []
    with pytest.raises(UnknownKeyId):
        verifier.verify(tokens[2])


def test_a_kid_that_comes_to_name_another_key_counts_as_lost(key: Ed25519PrivateKey) -> None:
    # A legacy kid is 96 bits of a hash: two keys sharing one is a collision no published record
    # can be made to have, so the key set is built by hand.
    real = held_key(key.public_key())
    other = held_key(Ed25519PrivateKey.generate().public_key())
    colliding = HeldKey(key=other.key, kid=other.kid, legacy_kid=real.legacy_kid, jwk=other.jwk)
    assert KeySet([real]).kids_lost_in(KeySet([real, other])) == set()
    assert KeySet([real, other]).kids_lost_in(KeySet([real])) == {other.kid, other.legacy_kid}
    # The legacy kid is still held, but by another key: tokens cached under it must go.
    assert real.legacy_kid in KeySet([real]).kids_lost_in(KeySet([colliding]))


def lookups(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "gatehouse_http_token_cache_lookups_total", {"outcome": outcome}
    )
    return value or 0.0


def test_hits_and_misses_are_counted(key: Ed25519PrivateKey) -> None:
    verifier = verifier_of(key)
    token = sign(key)
    hits, misses = lookups("hit"), lookups("miss")
    for _ in range(HITS_PER_COUNT + 2):  # a miss, then the hits
        verifier.verify(token)
    assert (lookups("hit"), lookups("miss")) == (hits + HITS_PER_COUNT, misses + 1)
    verifier.verify(sign(key, sid="another"))  # a miss also counts the hits since
    assert (lookups("hit"), lookups("miss")) == (hits + HITS_PER_COUNT + 1, misses + 2)
