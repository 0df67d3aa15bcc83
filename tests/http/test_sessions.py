"""Session tokens from the Bearer header or the cookie, and CSRF on cookie-authenticated API
calls, through the app to a stub auth replica."""

from __future__ import annotations

import re

import httpx
import pytest

from devstack import DataStores
from services.contract import auth_pb2 as pb
from tests.http.gateway import Gateway, running_gateway
from tests.http.stub_auth_server import Answer, answer_ok


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
    planted = "csrf-token-of-the-test-0123456789"
    cookies = f"session={gateway.token()}; csrf={planted}"
    for headers in (
        {"Cookie": cookies},
        {"Cookie": cookies, "X-CSRF-Token": "another-token-0123456789"},
        # A planted cookie and the same value echoed: double submit alone would pass it.
        {"Cookie": cookies, "X-CSRF-Token": planted},
        {"Cookie": f"session={gateway.token()}; csrf=x", "X-CSRF-Token": "x"},
        # The token of another session.
        {"Cookie": f"session={gateway.token()}", "X-CSRF-Token": gateway.csrf_token("other")},
    ):
        response = await gateway.client.request(method, path, headers=headers, **body)  # type: ignore[arg-type]
        assert error_code(response) == (403, "csrf_failed")
        assert "X-CSRF-Token" in response.json()["error"]["message"]
    assert gateway.auth_server.calls == []


async def test_a_cookie_call_with_its_sessions_token_passes(gateway: Gateway) -> None:
    gateway.auth_server.handler = profile_reply
    token = gateway.csrf_token("session-1")
    response = await gateway.client.patch(
        "/api/v1/me",
        json={"nickname": "Ann"},
        headers={"Cookie": f"session={gateway.token()}; csrf={token}", "X-CSRF-Token": token},
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


async def test_the_cookies_are_secure_and_host_prefixed_when_configured(
    data_stores: DataStores,
) -> None:
    async with running_gateway(data_stores, cookie_secure=True) as secure:
        secure.auth_server.handler = login_reply
        response = await secure.client.post(
            "/api/v1/sessions", json={"username": "ann", "password": "pw12345678"}
        )
        session, cleared_legacy = response.headers.get_list("set-cookie")
        assert session.startswith(
            "__Host-session=t.t.t; HttpOnly; SameSite=Lax; Path=/; Secure; Max-Age="
        )
        assert cleared_legacy == "session=; HttpOnly; SameSite=Lax; Path=/; Secure; Max-Age=0"
        page = await secure.client.get("/login")
        assert re.fullmatch(
            r"__Host-csrf=[\w.-]+; SameSite=Lax; Path=/; Secure", page.headers["set-cookie"]
        )


async def test_under_https_the_old_session_cookie_is_still_read(data_stores: DataStores) -> None:
    """Browsers that logged in before the upgrade hold `session`: they stay logged in."""
    async with running_gateway(data_stores, cookie_secure=True) as secure:
        secure.auth_server.handler = profile_reply
        token = secure.token()
        for name in ("__Host-session", "session"):
            response = await secure.client.patch(
                "/api/v1/me",
                json={"nickname": "Ann"},
                headers={"Cookie": f"{name}={token}", "X-CSRF-Token": secure.csrf_token()},
            )
            assert response.status_code == 200, name
            page = await secure.client.get("/", headers={"Cookie": f"{name}={token}"})
            assert page.headers["location"] == "/profile", name
        # The new name wins over the old one.
        both = await secure.client.get(
            "/", headers={"Cookie": f"session={token}; __Host-session=stale"}
        )
        assert both.headers["location"] == "/login"
        # Logging out clears both names.
        secure.auth_server.handler = answer_ok
        response = await secure.client.delete(
            "/api/v1/sessions/current",
            headers={"Cookie": f"session={token}", "X-CSRF-Token": secure.csrf_token()},
        )
        assert response.status_code == 204
        assert [cookie.split("=")[0] for cookie in response.headers.get_list("set-cookie")] == [
            "__Host-session",
            "session",
        ]
        assert all(c.endswith("Max-Age=0") for c in response.headers.get_list("set-cookie"))


async def test_under_https_the_old_cookie_name_carries_no_new_token(
    data_stores: DataStores,
) -> None:
    """A sibling subdomain can plant `session` but never `__Host-session`: a token issued since
    the upgrade (it has iss and aud) under the old name is a planted one, and is not read."""
    async with running_gateway(data_stores, cookie_secure=True) as secure:
        secure.auth_server.handler = profile_reply
        planted = secure.token(user_id=666, session_id="attacker", iss="gatehouse", aud="gatehouse")
        page = await secure.client.get("/", headers={"Cookie": f"session={planted}"})
        assert page.headers["location"] == "/login"
        response = await secure.client.get("/api/v1/me", headers={"Cookie": f"session={planted}"})
        assert response.status_code == 401
        # The same token under the current name is the visitor's own session.
        page = await secure.client.get("/", headers={"Cookie": f"__Host-session={planted}"})
        assert page.headers["location"] == "/profile"


async def test_hsts_is_sent_only_under_https(data_stores: DataStores, gateway: Gateway) -> None:
    plain = await gateway.client.get("/healthz")
    assert "strict-transport-security" not in plain.headers
    async with running_gateway(data_stores, cookie_secure=True, hsts_max_age=600) as secure:
        for path in ("/healthz", "/login", "/api/v1/me", "/no-such-page"):
            response = await secure.client.get(path)
            assert response.headers["strict-transport-security"] == "max-age=600", path
