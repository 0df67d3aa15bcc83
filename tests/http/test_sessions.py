"""Session tokens from the Bearer header or the cookie, and CSRF on cookie-authenticated API
calls, through the app to a stub auth replica."""

from __future__ import annotations

import httpx
import pytest

from devstack import DataStores
from services.contract import auth_pb2 as pb
from tests.http.gateway import Gateway, running_gateway
from tests.http.stub_auth_server import Answer

CSRF = "csrf-token-of-the-test-0123456789"


async def profile_reply(envelope: pb.Envelope) -> Answer:
    return Answer(
        payload=pb.ProfileReply(
            user=pb.User(id=5, username="ann", nickname="Ann")
        ).SerializeToString()
    )


def error_code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


UNSAFE_CALLS = [
    ("PATCH", "/api/v1/me", {"json": {"nickname": "Nick"}}),
    ("DELETE", "/api/v1/sessions/current", {}),
    ("PUT", "/api/v1/me/avatar", {"content": b"not checked before CSRF"}),
]


@pytest.mark.parametrize(("method", "path", "body"), UNSAFE_CALLS)
async def test_a_cookie_call_without_the_csrf_header_is_refused(
    gateway: Gateway, method: str, path: str, body: dict[str, object]
) -> None:
    cookies = f"session={gateway.token()}; csrf={CSRF}"
    for headers in (
        {"Cookie": cookies},
        {"Cookie": cookies, "X-CSRF-Token": "another-token-0123456789"},
    ):
        response = await gateway.client.request(method, path, headers=headers, **body)  # type: ignore[arg-type]
        assert error_code(response) == (403, "csrf_failed")
        assert "X-CSRF-Token" in response.json()["error"]["message"]
    # Without the csrf cookie no header can match.
    response = await gateway.client.request(
        method,
        path,
        headers={"Cookie": f"session={gateway.token()}", "X-CSRF-Token": ""},
        **body,  # type: ignore[arg-type]
    )
    assert error_code(response) == (403, "csrf_failed")
    assert gateway.auth_server.calls == []


async def test_a_cookie_call_with_the_matching_header_passes(gateway: Gateway) -> None:
    gateway.auth_server.handler = profile_reply
    response = await gateway.client.patch(
        "/api/v1/me",
        json={"nickname": "Ann"},
        headers={"Cookie": f"session={gateway.token()}; csrf={CSRF}", "X-CSRF-Token": CSRF},
    )
    assert response.status_code == 200


async def test_bearer_calls_need_no_csrf_token(gateway: Gateway) -> None:
    gateway.auth_server.handler = profile_reply
    response = await gateway.client.patch(
        "/api/v1/me",
        json={"nickname": "Ann"},
        headers={
            "Authorization": f"Bearer {gateway.token()}",
            "Cookie": f"session={gateway.token()}",
        },
    )
    assert response.status_code == 200


async def test_safe_cookie_calls_need_no_csrf_token(gateway: Gateway) -> None:
    gateway.auth_server.handler = profile_reply
    response = await gateway.client.get(
        "/api/v1/me", headers={"Cookie": f"session={gateway.token()}"}
    )
    assert response.status_code == 200


async def test_login_and_signup_are_not_cookie_authenticated(gateway: Gateway) -> None:
    # A stale session cookie does not make them need a token.
    headers = {"Cookie": f"session={gateway.token()}"}
    signup = await gateway.client.post(
        "/api/v1/users", json={"username": "ann", "password": "pw12345678"}, headers=headers
    )
    login = await gateway.client.post(
        "/api/v1/sessions", json={"username": "ann", "password": "pw12345678"}, headers=headers
    )
    assert (signup.status_code, login.status_code) == (201, 200)


async def test_without_any_token_it_is_unauthenticated_not_csrf(gateway: Gateway) -> None:
    response = await gateway.client.patch("/api/v1/me", json={"nickname": "x"})
    assert error_code(response) == (401, "unauthenticated")


async def login_reply(envelope: pb.Envelope) -> Answer:
    reply = pb.AuthenticateReply(token="t.t.t", expires_at_ms=2**41, user=pb.User(id=1))
    return Answer(payload=reply.SerializeToString())


async def test_the_cookies_are_secure_when_configured(data_stores: DataStores) -> None:
    async with running_gateway(data_stores, cookie_secure=True) as secure:
        secure.auth_server.handler = login_reply
        response = await secure.client.post(
            "/api/v1/sessions", json={"username": "ann", "password": "pw12345678"}
        )
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("session=t.t.t; HttpOnly; SameSite=Lax; Path=/; Secure; Max-Age=")
        page = await secure.client.get("/login")
        assert page.headers["set-cookie"].endswith("; SameSite=Lax; Path=/; Secure")
