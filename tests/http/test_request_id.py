"""Every response of the assembled app carries X-Request-ID and nosniff, the early refusals of
the outer middlewares (431, 503) and the answers of the inner ones (408, 403) included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from devstack import DataStores
from devstack.ports import wait_until_async
from services.contract import auth_pb2 as pb
from tests.http.gateway import Gateway, running_gateway
from tests.http.stub_auth_server import Answer

JSON = {"content-type": "application/json"}


def assert_traced(response: httpx.Response, status: int, code: str, request_id: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.headers["x-request-id"] == request_id
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_a_431_for_oversized_headers_carries_the_request_id(gateway: Gateway) -> None:
    padding = "x" * (gateway.settings.max_header_bytes + 1)
    response = await gateway.client.get(
        "/api/v1/me", headers={"X-Request-ID": "req-431", "X-Padding": padding}
    )
    assert_traced(response, 431, "request_header_fields_too_large", "req-431")


async def test_a_431_gets_a_fresh_request_id_when_the_caller_sent_none(gateway: Gateway) -> None:
    padding = "x" * (gateway.settings.max_header_bytes + 1)
    response = await gateway.client.get("/api/v1/me", headers={"X-Padding": padding})
    assert response.status_code == 431
    assert len(response.headers["x-request-id"]) == 16


async def test_a_503_from_admission_control_carries_the_request_id(
    data_stores: DataStores,
) -> None:
    release = asyncio.Event()

    async def held(envelope: pb.Envelope) -> Answer:
        await release.wait()
        return Answer()

    async with running_gateway(data_stores, admission_concurrency=1, max_in_flight=1) as gateway:
        gateway.auth_server.handler = held
        bearer = {"Authorization": f"Bearer {gateway.token()}"}
        holder = asyncio.create_task(gateway.client.get("/api/v1/me", headers=bearer))
        try:
            await wait_until_async(
                lambda: bool(gateway.auth_server.calls), 10.0, "the first call to be held"
            )
            shed = await gateway.client.get(
                "/api/v1/me", headers={**bearer, "X-Request-ID": "req-503"}
            )
            assert_traced(shed, 503, "overloaded", "req-503")
            assert shed.headers["retry-after"] == "1"
        finally:
            release.set()
            await asyncio.wait_for(holder, 10)


async def test_a_408_for_a_late_body_carries_the_request_id(data_stores: DataStores) -> None:
    never = asyncio.Event()

    async def stalled_body() -> AsyncIterator[bytes]:
        yield b'{"username": "ann",'
        await never.wait()

    async with running_gateway(data_stores, body_timeout=0.2) as gateway:
        response = await asyncio.wait_for(
            gateway.client.post(
                "/api/v1/users",
                content=stalled_body(),
                headers={**JSON, "X-Request-ID": "req-408"},
            ),
            10,
        )
        assert_traced(response, 408, "request_timeout", "req-408")


async def test_a_cross_site_403_carries_the_request_id(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/api/v1/sessions",
        json={"username": "ann", "password": "pw12345678"},
        headers={"Origin": "https://evil.example", "X-Request-ID": "req-403"},
    )
    assert_traced(response, 403, "csrf_failed", "req-403")


async def test_early_refusals_carry_both_hsts_and_the_request_id(data_stores: DataStores) -> None:
    async with running_gateway(data_stores, cookie_secure=True) as gateway:
        padding = "x" * (gateway.settings.max_header_bytes + 1)
        response = await gateway.client.get(
            "/api/v1/me", headers={"X-Request-ID": "req-hsts", "X-Padding": padding}
        )
        assert_traced(response, 431, "request_header_fields_too_large", "req-hsts")
        assert response.headers["strict-transport-security"].startswith("max-age=")


async def test_early_refusals_are_counted_in_the_latency_metric(gateway: Gateway) -> None:
    padding = "x" * (gateway.settings.max_header_bytes + 1)
    await gateway.client.get("/api/v1/me", headers={"X-Padding": padding})
    metrics = await gateway.client.get("/metrics")
    assert 'gatehouse_http_request_seconds_count{route="unmatched",status="431"}' in metrics.text
