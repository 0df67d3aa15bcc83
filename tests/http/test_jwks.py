"""GET /.well-known/jwks.json and what a worker says about the keys it holds (/readyz, the
gatehouse_http_signing_key_info gauge), on an app watching real etcd."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from devstack import DataStores
from devstack.ports import wait_until_async
from services.http import public_keys
from services.http.errors import EXCEPTION_HANDLERS
from services.http.jwks import JWKS_PATH, jwks_routes
from services.http.public_keys import KeySet, parse_public_keys
from tests.http.gateway import Gateway, kid_of, legacy_kid_of, public_pem, running_gateway

JWK_MEMBERS = {"kty", "crv", "x", "kid", "alg", "use"}


def held_gauge(kid: str) -> float | None:
    return REGISTRY.get_sample_value("gatehouse_http_signing_key_info", {"kid": kid})


async def listed_kids(gateway: Gateway) -> list[str]:
    response = await gateway.client.get(JWKS_PATH)
    assert response.status_code == 200, response.text
    return [jwk["kid"] for jwk in response.json()["keys"]]


async def test_the_jwks_lists_the_published_and_configured_keys_once_each(
    data_stores: DataStores,
) -> None:
    configured = Ed25519PrivateKey.generate()
    async with running_gateway(
        data_stores, jwt_public_keys=parse_public_keys(public_pem(configured))
    ) as gateway:
        # An older replica also filed the same key under its legacy kid: one entry still.
        await gateway.publish_key(legacy_kid_of(gateway.signing_key), gateway.signing_key)
        await wait_until_async(
            lambda: gateway.app.state.tokens.key_count == 2, 5.0, "both keys to be held"
        )
        response = await gateway.client.get(JWKS_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "public, max-age=300"
    assert response.headers["x-content-type-options"] == "nosniff"  # the edge still applies
    assert response.headers["x-request-id"]
    body = response.json()
    assert set(body) == {"keys"}
    assert all(set(jwk) == JWK_MEMBERS for jwk in body["keys"]), body  # never "d"
    assert all(
        (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
        for jwk in body["keys"]
    )
    assert sorted(jwk["kid"] for jwk in body["keys"]) == sorted(
        [kid_of(gateway.signing_key), kid_of(configured)]
    )


async def test_a_key_published_later_appears_in_the_jwks_and_a_withdrawn_one_leaves(
    gateway: Gateway,
) -> None:
    new_key = Ed25519PrivateKey.generate()
    new_kid = kid_of(new_key)
    assert await listed_kids(gateway) == [gateway.kid]
    await gateway.publish_key(new_kid, new_key)
    try:
        await wait_until_async(
            lambda: _lists(gateway, sorted([gateway.kid, new_kid])),
            5.0,
            "the JWKS to list the new key",
        )
    finally:
        await gateway.etcd.delete(f"{gateway.settings.jwt_keys_prefix}{new_kid}".encode())
    await wait_until_async(
        lambda: _lists(gateway, [gateway.kid]), 5.0, "the JWKS to drop the withdrawn key"
    )


async def _lists(gateway: Gateway, kids: list[str]) -> bool:
    return sorted(await listed_kids(gateway)) == kids


async def test_the_jwks_is_rendered_once_per_key_set_not_per_request(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    renderings: list[object] = []
    dumps = public_keys.json.dumps

    def counted_dumps(value: object, **options: Any) -> str:
        if isinstance(value, dict) and "keys" in value:  # a JWKS, not a log line
            renderings.append(value)
        return dumps(value, **options)

    monkeypatch.setattr(public_keys.json, "dumps", counted_dumps)
    responses = [await gateway.client.get(JWKS_PATH) for _ in range(20)]
    assert {response.status_code for response in responses} == {200}
    assert {response.content for response in responses} == {gateway.app.state.tokens.keys.jwks_body}
    assert renderings == []


async def test_the_jwks_is_503_with_the_error_envelope_until_keys_are_loaded() -> None:
    missing: list[str | None] = ["the JWT signing keys are not loaded from etcd yet"]
    app = Starlette(
        routes=jwks_routes(KeySet, lambda: missing[0]),
        exception_handlers=EXCEPTION_HANDLERS,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gatehouse.test") as client:
        refused = await client.get(JWKS_PATH)
        missing[0] = None
        served = await client.get(JWKS_PATH)
    assert refused.status_code == 503
    assert refused.json() == {
        "error": {
            "code": "not_ready",
            "message": "the JWT signing keys are not loaded from etcd yet; "
            "try again after the Retry-After delay",
        }
    }
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["cache-control"] == "no-store"
    assert (served.status_code, json.loads(served.content)) == (200, {"keys": []})


async def test_readyz_and_the_gauge_show_the_kids_the_worker_holds(gateway: Gateway) -> None:
    assert (await gateway.client.get("/readyz")).json() == {
        "status": "ready",
        "signing_key_kids": [gateway.kid],
    }
    assert held_gauge(gateway.kid) == 1.0
    new_key = Ed25519PrivateKey.generate()
    new_kid = kid_of(new_key)
    await gateway.publish_key(new_kid, new_key)

    async def readyz_kids() -> list[str]:
        return list((await gateway.client.get("/readyz")).json()["signing_key_kids"])

    async def readyz_lists_both() -> bool:
        return await readyz_kids() == sorted([gateway.kid, new_kid])

    try:
        await wait_until_async(readyz_lists_both, 5.0, "/readyz to list the new kid")
        assert (held_gauge(gateway.kid), held_gauge(new_kid)) == (1.0, 1.0)
    finally:
        await gateway.etcd.delete(f"{gateway.settings.jwt_keys_prefix}{new_kid}".encode())
    await wait_until_async(lambda: held_gauge(new_kid) == 0.0, 5.0, "the gauge to drop the kid")
    assert await readyz_kids() == [gateway.kid]
