"""Reading the signing keys again for a token with an unknown key id: once, single-flight, at
most once per interval; real etcd, the watch left unstarted so that only refreshes read it.
And the watched keys across an etcd that lost its data."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aetcd
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from devstack import DataStores
from devstack.etcd import Etcd
from devstack.ports import wait_until_async
from services.foundation.etcd import connect
from services.foundation.etcd_access import EtcdAccess
from services.http.csrf import CsrfTokens
from services.http.errors import ApiError
from services.http.sessions import Sessions
from services.http.signing_keys import SigningKeys
from services.http.tokens import InvalidToken, TokenVerifier
from tests.first_step import raises_on_first_step
from tests.http.gateway import TEST_CSRF_SECRET, kid_of, public_pem

INTERVAL = 1.0


def token_of(key: Ed25519PrivateKey, kid: str) -> str:
    now = int(time.time())
    claims = {"sub": "42", "sid": "s1", "iat": now, "exp": now + 600}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


def held_over() -> float | None:
    return REGISTRY.get_sample_value("gatehouse_http_jwt_keys_held_over")


def refreshes(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "gatehouse_http_jwt_key_refreshes_total", {"outcome": outcome}
    )
    return value or 0.0


def all_refreshes() -> float:
    return sum(refreshes(outcome) for outcome in ("changed", "unchanged", "failed"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class KeyedSessions:
    sessions: Sessions
    keys: SigningKeys
    clock: FakeClock
    etcd: aetcd.Client
    prefix: str

    async def publish(self, key: Ed25519PrivateKey) -> str:
        """Publish `key` as an auth replica does; its kid."""
        kid = kid_of(key)
        record = {"kid": kid, "alg": "EdDSA", "public_key": public_pem(key)}
        await self.etcd.put(f"{self.prefix}{kid}".encode(), json.dumps(record).encode())
        return kid


def keyed_sessions(
    access: EtcdAccess,
    prefix: str,
    clock: FakeClock,
    reset_grace: float = 0.0,
    tokens: TokenVerifier | None = None,
) -> tuple[Sessions, SigningKeys]:
    tokens = tokens or TokenVerifier()
    keys = SigningKeys(
        access,
        prefix,
        tokens.replace_published,
        key_count=lambda: tokens.key_count,
        refresh_interval=INTERVAL,
        refresh_timeout=1.0,
        reset_grace=reset_grace,
        clock=clock,
    )
    csrf = CsrfTokens(TEST_CSRF_SECRET, secure_cookie=False)
    return Sessions(tokens, keys, csrf, secure_cookie=False), keys


@pytest.fixture
async def keyed(data_stores: DataStores) -> AsyncIterator[KeyedSessions]:
    prefix = f"/test-keys-{uuid.uuid4().hex}/"
    etcd = data_stores.etcd_client()
    clock = FakeClock()
    sessions, keys = keyed_sessions(data_stores.etcd_access(), prefix, clock)
    try:
        yield KeyedSessions(sessions, keys, clock, etcd, prefix)
    finally:
        await keys.stop()
        await etcd.delete_prefix(prefix.encode())
        await etcd.close()


async def test_a_key_the_watch_has_not_delivered_is_read_once_and_verifies(
    keyed: KeyedSessions,
) -> None:
    key = Ed25519PrivateKey.generate()
    kid = await keyed.publish(key)
    before = refreshes("changed")
    session = await keyed.sessions.verified(token_of(key, kid))
    assert session.user_id == 42
    assert refreshes("changed") == before + 1
    assert keyed.keys.readiness() is None


async def test_concurrent_unknown_kids_share_one_read_and_later_ones_wait_for_none(
    keyed: KeyedSessions,
) -> None:
    await keyed.publish(Ed25519PrivateKey.generate())
    forger = Ed25519PrivateKey.generate()
    before = all_refreshes()

    async def forged(number: int) -> BaseException | None:
        try:
            await keyed.sessions.verified(token_of(forger, f"made-up-{number}"))
        except InvalidToken as refused:
            return refused
        return None

    first_wave = await asyncio.gather(*(forged(n) for n in range(50)))
    assert all(isinstance(outcome, InvalidToken) for outcome in first_wave)
    assert all_refreshes() == before + 1  # one etcd read for 50 tokens at once

    # Within the interval: refused at once, nothing read, nothing awaited (each call ends on
    # its first step, without suspending).
    for number in range(50, 1050):
        forged_token = token_of(forger, f"made-up-{number}")
        raises_on_first_step(keyed.sessions.verified(forged_token), InvalidToken)
    assert all_refreshes() == before + 1

    keyed.clock.now += INTERVAL  # the interval is over: the next unknown kid reads once more
    await asyncio.gather(*(forged(n) for n in range(1050, 1060)))
    assert all_refreshes() == before + 2


async def test_a_good_token_is_never_refused_before_the_keys_were_ever_loaded(
    data_stores: DataStores,
) -> None:
    # Nothing listens on port 9 (discard): the one read fails, and no key set was ever read.
    sessions, keys = keyed_sessions(
        EtcdAccess(endpoints=("127.0.0.1:9",)), "/nowhere/", FakeClock()
    )
    before = refreshes("failed")
    try:
        with pytest.raises(ApiError) as failure:
            await sessions.verified(token_of(Ed25519PrivateKey.generate(), "k"))
        assert (failure.value.status_code, failure.value.code) == (503, "not_ready")
        assert failure.value.headers is not None and "Retry-After" in failure.value.headers
        assert refreshes("failed") == before + 1
        assert "not loaded" in (keys.readiness() or "")
    finally:
        await keys.stop()


async def test_readiness_needs_the_keys_read_and_one_key(keyed: KeyedSessions) -> None:
    assert "not loaded" in (keyed.keys.readiness() or "")
    await keyed.keys.start()
    try:
        await wait_until_async(lambda: keyed.keys.loaded, 10.0, "the key set read from etcd")
        assert "no JWT signing key is published" in (keyed.keys.readiness() or "")
        await keyed.publish(Ed25519PrivateKey.generate())
        await wait_until_async(
            lambda: keyed.keys.readiness() is None, 10.0, "the published key to be watched"
        )
    finally:
        await keyed.keys.stop()


async def test_tokens_keep_verifying_when_etcd_loses_its_data(tmp_path: Path) -> None:
    """An emptied etcd holds no published key until each auth replica's next key sync (10 s by
    default). The watch takes the emptied etcd as it is (its revision went back); the keys held
    before stay for the reset grace, so their tokens verify and the worker stays ready, beside
    a key published in the new history."""
    etcd = Etcd(tmp_path / "etcd", name="etcd-wiped")
    etcd.start()
    access = EtcdAccess(endpoints=(etcd.endpoint,))
    prefix = "/gatehouse/jwt-keys/"
    tokens = TokenVerifier()
    sessions, keys = keyed_sessions(access, prefix, FakeClock(), reset_grace=60.0, tokens=tokens)
    client = connect(access, 0)

    async def publish(key: Ed25519PrivateKey) -> str:
        kid = kid_of(key)
        record = {"kid": kid, "alg": "EdDSA", "public_key": public_pem(key)}
        await client.put(f"{prefix}{kid}".encode(), json.dumps(record).encode())
        return kid

    try:
        for number in range(10):  # history the new one will not reach soon
            await client.put(f"/elsewhere/{number}".encode(), b"")
        await keys.start()
        before, after = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        before_kid = await publish(before)
        await wait_until_async(lambda: keys.readiness() is None, 10.0, "the key to be watched")
        assert (await sessions.verified(token_of(before, before_kid))).user_id == 42

        await client.close()
        etcd.restart_emptied()
        client = connect(access, 0)
        await wait_until_async(
            lambda: held_over() == 1, 20.0, "the worker to hold its key over the loss"
        )
        assert (await sessions.verified(token_of(before, before_kid))).user_id == 42
        assert keys.readiness() is None

        after_kid = await publish(after)
        await wait_until_async(
            lambda: tokens.keys.find(after_kid) is not None,
            10.0,
            "the key published after the loss to be watched",
        )
        assert (await sessions.verified(token_of(before, before_kid))).user_id == 42
        assert (await sessions.verified(token_of(after, after_kid))).user_id == 42
        assert held_over() == 1

        await publish(before)  # its replica publishes it again: the same record
        await wait_until_async(lambda: held_over() == 0, 10.0, "the key to be published again")
        assert (await sessions.verified(token_of(before, before_kid))).user_id == 42
    finally:
        await keys.stop()
        await client.close()
        etcd.stop()
