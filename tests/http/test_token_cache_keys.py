"""The verified-token cache of an app watching real etcd through a key rotation: the next key's
publication and the old key's withdrawal reach it through the watch, and only the old key's
tokens are forgotten (tests/http/test_verified_tokens.py has the cache's own cases)."""

from __future__ import annotations

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from devstack import DataStores
from devstack.ports import wait_until_async
from services.contract import auth_pb2 as pb
from tests.http.gateway import Gateway, kid_of, legacy_kid_of, running_gateway
from tests.http.stub_auth_server import Answer

CACHE_SIZE = 3


async def a_profile(envelope: pb.Envelope) -> Answer:
    return Answer(payload=pb.ProfileReply(user=pb.User(id=42, username="ann")).SerializeToString())


async def profile_read(gateway: Gateway, token: str) -> httpx.Response:
    return await gateway.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})


def misses() -> float:
    value = REGISTRY.get_sample_value(
        "gatehouse_http_token_cache_lookups_total", {"outcome": "miss"}
    )
    return value or 0.0


async def test_a_rotation_keeps_the_next_keys_tokens_and_drops_the_old_keys(
    data_stores: DataStores,
) -> None:
    async with running_gateway(data_stores, token_cache_size=CACHE_SIZE) as gateway:
        gateway.auth_server.handler = a_profile
        tokens = gateway.app.state.tokens
        old_key, following = gateway.signing_key, Ed25519PrivateKey.generate()
        await gateway.publish_key(kid_of(following), following)
        await wait_until_async(lambda: tokens.key_count == 2, 5.0, "the next key to be held")
        old = gateway.token(session_id="old")
        old_legacy = gateway.token(session_id="legacy", kid=legacy_kid_of(old_key))
        new = gateway.token(session_id="new", key=following)
        for token in (old, old_legacy, new):
            assert (await profile_read(gateway, token)).status_code == 200
        assert tokens.cached_count == 3

        await gateway.etcd.delete(f"{gateway.settings.jwt_keys_prefix}{gateway.kid}".encode())
        await wait_until_async(
            lambda: tokens.keys.kids == (kid_of(following),), 5.0, "the old key to be withdrawn"
        )
        assert tokens.cached_count == 1
        checked = misses()
        assert (await profile_read(gateway, new)).status_code == 200
        assert misses() == checked  # still cached: no signature check
        for token in (old, old_legacy):
            assert (await profile_read(gateway, token)).status_code == 401

        for number in range(CACHE_SIZE + 1):
            token = gateway.token(session_id=f"more-{number}", key=following)
            assert (await profile_read(gateway, token)).status_code == 200
        assert tokens.cached_count == CACHE_SIZE  # GATEHOUSE_TOKEN_CACHE_SIZE bounds it


async def test_a_key_withdrawn_under_both_its_names_at_once_is_forgotten(
    data_stores: DataStores,
) -> None:
    """A key published by a release before thumbprints has a second record under its legacy
    kid; the auth service withdraws both in one etcd transaction, whose events share a
    revision (services.auth.signing.etcd_records.withdraw)."""
    async with running_gateway(data_stores, token_cache_size=CACHE_SIZE) as gateway:
        gateway.auth_server.handler = a_profile
        tokens = gateway.app.state.tokens
        old_key, following = gateway.signing_key, Ed25519PrivateKey.generate()
        old_names = (gateway.kid, legacy_kid_of(old_key))
        await gateway.publish_key(old_names[1], old_key)
        await gateway.publish_key(kid_of(following), following)
        await wait_until_async(lambda: tokens.key_count == 2, 5.0, "both keys to be held")
        old = [gateway.token(session_id=f"old-{kid}", kid=kid) for kid in old_names]
        for token in old:
            assert (await profile_read(gateway, token)).status_code == 200

        prefix = gateway.settings.jwt_keys_prefix
        deletes = [gateway.etcd.transactions.delete(f"{prefix}{kid}".encode()) for kid in old_names]
        await gateway.etcd.transaction(compare=[], success=deletes, failure=[])
        await wait_until_async(
            lambda: tokens.keys.kids == (kid_of(following),), 5.0, "the old key to be withdrawn"
        )
        for token in old:
            assert (await profile_read(gateway, token)).status_code == 401
