"""The upgrade to thumbprint key ids logs nobody out: a fleet where an older auth replica
(legacy kids, in its tokens and its etcd record) and a current one share the signing key, as
real processes behind a current HTTP process.

The older side is a copy of this code whose token issuer still names its key by the legacy id,
which is all that changed for the auth service."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from devstack.gatehouse import Gatehouse, Service
from services.auth.tokens import load_private_key
from services.foundation.jwk import legacy_kid, thumbprint_kid
from tests.system.support import bearer, copy_of_the_code, new_username

ISSUED_KID = "        self._kid = thumbprint_kid(raw_public_key)\n"


@pytest.fixture(scope="module")
def legacy_kid_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_of_the_code(tmp_path_factory.mktemp("legacy-kids"))
    tokens = root / "services" / "auth" / "tokens.py"
    source = tokens.read_text()
    assert ISSUED_KID in source, "the token issuer changed; update this test's anchor"
    tokens.write_text(
        source.replace(
            ISSUED_KID,
            "        from services.foundation.jwk import legacy_kid\n"
            "        self._kid = legacy_kid(raw_public_key)\n",
        )
    )
    return root


def kids_of_the_signing_key(gatehouse: Gatehouse) -> tuple[str, str]:
    """(thumbprint, legacy) kids of the stack's signing key."""
    raw = (
        load_private_key(gatehouse.secrets.jwt_private_key)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return thumbprint_kid(raw), legacy_kid(raw)


async def login(client: httpx.AsyncClient, username: str) -> str:
    answer = await client.post(
        "/api/v1/sessions", json={"username": username, "password": "password1"}
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


@pytest.mark.slow
async def test_tokens_of_an_older_replica_keep_working_through_the_upgrade(
    gatehouse: Gatehouse, legacy_kid_checkout: Path
) -> None:
    run = uuid.uuid4().hex
    own = {
        "GATEHOUSE_DISCOVERY_PREFIX": f"/gatehouse-kids-{run}/auth/",
        "GATEHOUSE_JWT_KEYS_PREFIX": f"/gatehouse-kids-{run}/jwt-keys/",
    }
    thumbprint, legacy = kids_of_the_signing_key(gatehouse)
    older = gatehouse.start_auth(own, code_root=legacy_kid_checkout)
    http = gatehouse.start_http(own)
    current: Service | None = None
    url = f"http://127.0.0.1:{http.ports['http']}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=15.0, trust_env=False) as client:
            username = new_username("kids")
            created = await client.post(
                "/api/v1/users", json={"username": username, "password": "password1"}
            )
            assert created.status_code == 201, created.text
            before = await login(client, username)
            assert jwt.get_unverified_header(before)["kid"] == legacy
            assert (await client.get("/api/v1/me", headers=bearer(before))).status_code == 200

            # The rolling upgrade: a current replica joins, then the older one leaves.
            current = gatehouse.start_auth(own)
            older.process.stop()
            after = await login(client, username)
            assert jwt.get_unverified_header(after)["kid"] == thumbprint

            for token in (before, after):
                me = await client.get("/api/v1/me", headers=bearer(token))
                assert me.status_code == 200, me.text
            # Both replicas' records name one key: the JWKS lists it once, by thumbprint.
            jwks = (await client.get("/.well-known/jwks.json")).json()
            assert [key["kid"] for key in jwks["keys"]] == [thumbprint]
    finally:
        http.process.stop()
        gatehouse.http.remove(http)
        for replica in (older, current):
            if replica is not None:
                replica.process.stop()
                gatehouse.auth.remove(replica)
