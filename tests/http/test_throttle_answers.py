"""The HTTP side of the login throttle, against a stub auth replica: what the tier tells the
auth service about the caller, and how it answers the throttle's refusal."""

from __future__ import annotations

import time

import pytest

from devstack import DataStores
from services.contract import auth_pb2 as pb
from services.http.client_ip import parse_trusted_proxies
from services.http.errors import TOO_MANY_ATTEMPTS_MESSAGE
from tests.http.gateway import Gateway, running_gateway
from tests.http.stub_auth_server import Answer

USER = pb.User(id=7, username="ann", nickname="ann", created_at_ms=1, updated_at_ms=2)
CREDENTIALS = {"username": "ann", "password": "correct horse"}


def authenticated(device_cookie: str = "") -> Answer:
    reply = pb.AuthenticateReply(
        token="not-checked-here",
        expires_at_ms=int(time.time() * 1000) + 60_000,
        user=USER,
        device_cookie=device_cookie,
        device_cookie_expires_at_ms=int(time.time() * 1000) + 3_600_000 if device_cookie else 0,
    )
    return Answer(payload=reply.SerializeToString())


def answering(answer: Answer) -> object:
    async def handler(envelope: pb.Envelope) -> Answer:
        return answer

    return handler


def last_request(gateway: Gateway, message_type: type) -> object:
    return message_type.FromString(gateway.auth_server.calls[-1].payload)


@pytest.mark.parametrize(
    "path",
    ["/api/v1/sessions", "/open_api/v1/authenticate", "/api/v1/users", "/open_api/v1/register"],
)
async def test_the_throttles_refusal_is_one_429_everywhere(gateway: Gateway, path: str) -> None:
    gateway.auth_server.handler = answering(
        Answer(pb.STATUS_OVERLOADED, reason="too_many_attempts", message="x", retry_after_seconds=7)
    )
    response = await gateway.client.post(path, json=CREDENTIALS)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json() == {
        "error": {"code": "too_many_attempts", "message": TOO_MANY_ATTEMPTS_MESSAGE}
    }


async def test_a_plain_overload_stays_a_503(gateway: Gateway) -> None:
    gateway.auth_server.handler = answering(Answer(pb.STATUS_OVERLOADED, reason="overloaded"))
    response = await gateway.client.post("/api/v1/sessions", json=CREDENTIALS)
    assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded"


async def test_password_calls_carry_the_peer_address_and_the_device_cookie(
    gateway: Gateway,
) -> None:
    gateway.auth_server.handler = answering(authenticated())
    # No proxy is trusted here: a forged X-Forwarded-For changes nothing.
    headers = {"X-Forwarded-For": "198.51.100.66", "Cookie": "device=the-device-cookie"}
    await gateway.client.post("/api/v1/sessions", json=CREDENTIALS, headers=headers)
    request = last_request(gateway, pb.AuthenticateRequest)
    assert (request.client_ip, request.device_cookie) == ("127.0.0.1", "the-device-cookie")
    await gateway.client.post("/api/v1/users", json=CREDENTIALS, headers=headers)
    register = last_request(gateway, pb.RegisterRequest)
    assert (register.client_ip, register.device_cookie) == ("127.0.0.1", "the-device-cookie")


async def test_a_login_sets_the_device_cookie_the_auth_service_minted(gateway: Gateway) -> None:
    gateway.auth_server.handler = answering(authenticated("minted.by.auth"))
    response = await gateway.client.post("/api/v1/sessions", json=CREDENTIALS)
    (device,) = [c for c in response.headers.get_list("set-cookie") if c.startswith("device=")]
    attributes = device.split("; ")
    assert attributes[0] == "device=minted.by.auth"
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes)
    assert "Secure" not in attributes
    max_age = int(next(a for a in attributes if a.startswith("Max-Age=")).split("=")[1])
    assert 3590 <= max_age <= 3600


async def test_an_auth_service_without_device_cookies_gets_none_set(gateway: Gateway) -> None:
    gateway.auth_server.handler = answering(authenticated(""))
    response = await gateway.client.post("/api/v1/sessions", json=CREDENTIALS)
    assert response.status_code == 200
    assert not [c for c in response.headers.get_list("set-cookie") if "device" in c]


async def test_behind_a_trusted_proxy_with_secure_cookies(data_stores: DataStores) -> None:
    async with running_gateway(
        data_stores, trusted_proxies=parse_trusted_proxies("127.0.0.0/8"), cookie_secure=True
    ) as gateway:
        gateway.auth_server.handler = answering(authenticated("minted"))
        response = await gateway.client.post(
            "/api/v1/sessions",
            json=CREDENTIALS,
            headers={
                "X-Forwarded-For": "6.6.6.6, 198.51.100.9, 127.0.0.5",
                "Cookie": "__Host-device=from-the-browser; device=not-this-one",
            },
        )
        request = last_request(gateway, pb.AuthenticateRequest)
        assert (request.client_ip, request.device_cookie) == ("198.51.100.9", "from-the-browser")
        (device,) = [c for c in response.headers.get_list("set-cookie") if "device=" in c]
        assert device.startswith("__Host-device=minted; ") and "; Secure" in device
        assert (
            gateway.app.state.client_addresses.forwarded_proto(
                {"client": ("127.0.0.1", 1), "headers": [(b"x-forwarded-proto", b"https")]}
            )
            == "https"
        )
