"""The assembled app: routing errors, ops endpoints, discovery and key watching via real etcd."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from devstack import DataStores
from devstack.ports import wait_until_async
from services.contract import auth_pb2 as pb
from services.foundation.discovery import registration
from tests.http.gateway import Gateway, kid_of, running_gateway
from tests.http.stub_auth_server import Answer, StubAuthServer


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"]


async def test_unknown_paths_are_json_404s(gateway: Gateway) -> None:
    for path in ("/nowhere", "/api/v1/me/", "/api/v2/me", "/profile/"):
        response = await gateway.client.get(path)
        assert error_of(response) == (404, "not_found"), path
        assert response.headers["x-request-id"]


async def test_wrong_methods_are_json_405s_with_allow(gateway: Gateway) -> None:
    response = await gateway.client.put("/api/v1/me", json={})
    assert error_of(response) == (405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE"}
    response = await gateway.client.get("/api/v1/users")
    assert error_of(response) == (405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


async def test_a_405_allows_the_methods_of_every_route_on_its_path(gateway: Gateway) -> None:
    """/api/v1/sessions is served by two routes (logging in; listing and ending sessions): the
    405 named only the first one's POST, so a client trusting Allow (RFC 9110: every method
    the resource supports) would think listing and ending sessions did not exist."""
    for method in ("PATCH", "PUT", "OPTIONS"):
        response = await gateway.client.request(method, "/api/v1/sessions")
        assert error_of(response) == (405, "method_not_allowed")
        assert response.headers["allow"] == "DELETE, GET, HEAD, POST", method
        assert response.json()["error"]["message"].endswith("use DELETE, GET, HEAD, POST")


async def test_a_405_of_a_static_file_keeps_the_methods_it_was_raised_with(
    gateway: Gateway,
) -> None:
    """StaticFiles raises its own 405 (Allow: GET, HEAD) under a Mount, which is no Route: the
    methods were then collected from the routes alone, and Allow came out empty."""
    response = await gateway.client.post("/static/gatehouse.css")
    assert error_of(response) == (405, "method_not_allowed")
    assert response.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize("asked", ["bytes=a-b", "bytes=5-1", "bytes=-0", "bytes=0-0", "items=1"])
async def test_a_static_file_is_served_whole_whatever_range_asks(
    gateway: Gateway, asked: str
) -> None:
    """Starlette's malformed-range 400 was plain text and its 416 empty: no JSON error."""
    whole = await gateway.client.get("/static/gatehouse.css")
    response = await gateway.client.get("/static/gatehouse.css", headers={"Range": asked})
    assert response.status_code == 200 and response.content == whole.content
    assert "content-range" not in response.headers
    assert "accept-ranges" not in response.headers and "accept-ranges" not in whole.headers


async def test_health_readiness_and_metrics(gateway: Gateway) -> None:
    health = await gateway.client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (await gateway.client.get("/readyz")).status_code == 200
    await gateway.client.get("/api/v1/me", headers={"Authorization": f"Bearer {gateway.token()}"})
    metrics = await gateway.client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert 'gatehouse_http_request_seconds_count{route="/api/v1/me",status="200"}' in text
    assert 'gatehouse_http_rpc_seconds_count{method="get_profile",outcome="ok"}' in text
    assert "gatehouse_http_discovered_replicas" in text


async def test_without_replicas_readyz_and_calls_are_503(data_stores: DataStores) -> None:
    async with running_gateway(data_stores) as gateway:
        await gateway.auth_registration.stop()
        await gateway.auth_server.stop()  # a replica still connected would be kept meanwhile
        await wait_until_async(
            lambda: gateway.app.state.auth.readiness() is not None,
            5.0,
            "the replica to be forgotten",
        )
        ready = await gateway.client.get("/readyz")
        assert error_of(ready) == (503, "not_ready")
        response = await gateway.client.get(
            "/api/v1/me", headers={"Authorization": f"Bearer {gateway.token()}"}
        )
        assert error_of(response) == (503, "unavailable")
        assert response.headers["retry-after"] == "1"


async def test_a_replica_whose_record_vanished_keeps_answering_while_none_is_listed(
    data_stores: DataStores,
) -> None:
    """Its lease lapsed in an etcd outage and it has not registered again yet: the HTTP tier
    keeps calling it while its connection is open, and stays ready."""
    async with running_gateway(data_stores) as gateway:
        await gateway.auth_registration.stop()
        await wait_until_async(
            lambda: REGISTRY.get_sample_value("gatehouse_http_replicas_kept_without_record") == 1,
            5.0,
            "discovery to list none, the replica kept",
        )
        assert (await gateway.client.get("/readyz")).status_code == 200
        response = await gateway.client.get(
            "/api/v1/me", headers={"Authorization": f"Bearer {gateway.token()}"}
        )
        assert response.status_code == 200


async def test_a_new_replica_gets_calls_within_a_second(gateway: Gateway) -> None:
    newcomer = await StubAuthServer(name="stub-new").start()
    key = registration(
        gateway.settings.etcd_access,
        gateway.settings.discovery_prefix,
        newcomer.record(),
        ttl=10,
    )
    try:
        await key.start()
        await wait_until_async(lambda: key.held, 5.0, "the newcomer to be registered")
        registered = time.monotonic()
        # Sequential calls always tie (nothing outstanding), so the newcomer gets about half.
        while not newcomer.calls:
            assert time.monotonic() - registered < 1.0, "the new replica got no call within 1 s"
            await gateway.client.get(
                "/api/v1/me", headers={"Authorization": f"Bearer {gateway.token()}"}
            )
    finally:
        await key.stop()
        await wait_until_async(
            lambda: "stub-new" not in gateway.app.state.auth.replicas, 5.0, "the newcomer to leave"
        )
        await newcomer.stop()


async def test_a_deregistered_replica_finishes_its_calls_and_takes_no_new_ones(
    data_stores: DataStores,
) -> None:
    release = asyncio.Event()

    async def held(envelope: pb.Envelope) -> Answer:
        await release.wait()
        return Answer()

    async with running_gateway(data_stores) as gateway:
        headers = {"Authorization": f"Bearer {gateway.token()}"}
        leaving = gateway.auth_server
        leaving.handler = held
        held_call = asyncio.create_task(gateway.client.get("/api/v1/me", headers=headers))
        await wait_until_async(lambda: len(leaving.calls) == 1, 5.0, "the call to reach stub-1")
        successor = await StubAuthServer(name="stub-2").start()
        key = registration(
            gateway.settings.etcd_access,
            gateway.settings.discovery_prefix,
            successor.record(),
            ttl=10,
        )
        await key.start()
        try:
            await wait_until_async(
                lambda: "stub-2" in gateway.app.state.auth.replicas, 5.0, "stub-2 to join"
            )
            await gateway.auth_registration.stop()
            await wait_until_async(
                lambda: "stub-1" not in gateway.app.state.auth.replicas, 5.0, "stub-1 to leave"
            )
            for _ in range(10):
                assert (await gateway.client.get("/api/v1/me", headers=headers)).status_code == 200
            assert (len(leaving.calls), len(successor.calls)) == (1, 10)
            assert leaving.open_connections == 1  # still serving the held call
            release.set()
            assert (await held_call).status_code == 200
            await wait_until_async(
                lambda: leaving.open_connections == 0, 5.0, "stub-1's connections to close"
            )
        finally:
            release.set()
            await key.stop()
            await successor.stop()


async def test_keys_published_later_are_used_and_withdrawn_ones_refused(gateway: Gateway) -> None:
    rotated = Ed25519PrivateKey.generate()
    headers = {"Authorization": f"Bearer {gateway.token(key=rotated)}"}

    async def status() -> int:
        return (await gateway.client.get("/api/v1/me", headers=headers)).status_code

    assert await status() == 401
    await gateway.publish_key(kid_of(rotated), rotated)
    await wait_until_async(
        lambda: _is(status, 200), 5.0, "a token signed with the new key to be accepted"
    )
    await gateway.etcd.delete(f"{gateway.settings.jwt_keys_prefix}{kid_of(rotated)}".encode())
    await wait_until_async(lambda: _is(status, 401), 5.0, "the withdrawn key's token to be refused")


async def _is(status: Callable[[], Awaitable[int]], expected: int) -> bool:
    return await status() == expected


async def test_shutdown_closes_the_pool_connections(data_stores: DataStores) -> None:
    outliving = await StubAuthServer(name="outliving").start()
    keys = []
    try:
        async with running_gateway(data_stores) as gateway:
            await gateway.auth_registration.stop()
            await gateway.auth_server.stop()  # else it stays, unlisted, while it answers
            key = registration(
                gateway.settings.etcd_access,
                gateway.settings.discovery_prefix,
                outliving.record(),
                ttl=10,
            )
            keys.append(key)
            await key.start()
            await wait_until_async(
                lambda: list(gateway.app.state.auth.replicas) == ["outliving"], 5.0, "the switch"
            )
            response = await gateway.client.get(
                "/api/v1/me", headers={"Authorization": f"Bearer {gateway.token()}"}
            )
            assert response.status_code == 200
            assert outliving.open_connections == 1
        # Still registered: only the app's shutdown can have closed the connection.
        await wait_until_async(
            lambda: outliving.open_connections == 0, 5.0, "the pool to close at shutdown"
        )
    finally:
        for key in keys:
            await key.stop()
        await outliving.stop()


def not_ready_message(response: httpx.Response) -> str:
    assert error_of(response) == (503, "not_ready"), response.text
    message: str = response.json()["error"]["message"]
    return message


async def test_readyz_is_503_while_no_signing_key_is_held(data_stores: DataStores) -> None:
    async with running_gateway(data_stores) as gateway:
        assert (await gateway.client.get("/readyz")).status_code == 200
        await gateway.etcd.delete(f"{gateway.settings.jwt_keys_prefix}{gateway.kid}".encode())
        await wait_until_async(
            lambda: gateway.app.state.tokens.key_count == 0, 5.0, "the key to be withdrawn"
        )
        assert "no JWT signing key" in not_ready_message(await gateway.client.get("/readyz"))
        await gateway.publish_key(gateway.kid, gateway.signing_key)
        await wait_until_async(
            lambda: gateway.app.state.tokens.key_count == 1, 5.0, "the key to be back"
        )
        assert (await gateway.client.get("/readyz")).status_code == 200


async def test_readyz_is_503_while_no_known_replica_is_connected(data_stores: DataStores) -> None:
    async with running_gateway(data_stores) as gateway:
        await gateway.auth_server.stop()  # still registered in discovery, but unreachable
        await wait_until_async(
            lambda: gateway.app.state.auth.readiness() is not None,
            5.0,
            "the broken connection to be noticed",
        )
        message = not_ready_message(await gateway.client.get("/readyz"))
        assert "no connection to an auth replica is open" in message
        await gateway.auth_server.start(gateway.auth_server.port)
        await wait_until_async(
            lambda: gateway.app.state.auth.readiness() is None, 10.0, "a new connection"
        )
        assert (await gateway.client.get("/readyz")).status_code == 200
