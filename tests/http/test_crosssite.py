"""Cross-site requests that set or use the session cookie get 403 csrf_failed before any body
is read or any call is made; same-site ones, header-less API clients and safe methods pass."""

from __future__ import annotations

import time

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from devstack import DataStores
from services.contract import auth_pb2 as pb
from services.http.client_ip import parse_trusted_proxies
from services.http.middleware.crosssite import CrossSiteGuard
from tests.http.gateway import Gateway, running_gateway
from tests.http.stub_auth_server import Answer

OWN_ORIGIN = "http://gatehouse.test"  # the gateway client's base URL
CREDENTIALS = {"username": "ann", "password": "pw12345678"}
USER = pb.User(id=9, username="ann", nickname="Ann")
CROSS_SITE_HEADERS = [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://gatehouse.test.evil.example"},
    {"Origin": "https://gatehouse.test"},  # another scheme is another origin
    {"Origin": "http://gatehouse.test:8080"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "cross-site", "Origin": OWN_ORIGIN},
    {"Origin": "not an origin"},
]
SAME_SITE_HEADERS = [
    {},
    {"Origin": OWN_ORIGIN},
    {"Origin": "HTTP://GATEHOUSE.TEST:80"},
    {"Sec-Fetch-Site": "same-origin", "Origin": OWN_ORIGIN},
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},  # typed in the address bar
]


async def any_success(envelope: pb.Envelope) -> Answer:
    replies = {
        pb.METHOD_AUTHENTICATE: pb.AuthenticateReply(
            token="t.t.t", expires_at_ms=int(time.time() + 600) * 1000, user=USER
        ),
        pb.METHOD_REGISTER: pb.RegisterReply(user=USER),
        pb.METHOD_GET_PROFILE: pb.ProfileReply(user=USER),
        pb.METHOD_UPDATE_PROFILE: pb.ProfileReply(user=USER),
    }
    reply = replies.get(envelope.method)
    return Answer(payload=reply.SerializeToString() if reply is not None else b"")


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "csrf_failed"
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("headers", CROSS_SITE_HEADERS)
async def test_a_cross_site_login_or_signup_is_refused(
    gateway: Gateway, headers: dict[str, str]
) -> None:
    gateway.auth_server.handler = any_success
    attempts = [
        # The reported attack: a text/plain form POST that needs no CORS preflight.
        (
            "/api/v1/sessions",
            {
                "content": b'{"username":"ann","password":"pw12345678"}',
                "headers": {"Content-Type": "text/plain", **headers},
            },
        ),
        ("/api/v1/sessions", {"json": CREDENTIALS, "headers": headers}),
        ("/api/v1/users", {"json": CREDENTIALS, "headers": headers}),
        ("/login", {"data": CREDENTIALS, "headers": headers}),
        ("/signup", {"data": CREDENTIALS, "headers": headers}),
    ]
    for path, request in attempts:
        assert_refused(await gateway.client.post(path, **request))  # type: ignore[arg-type]
    assert gateway.auth_server.calls == []


@pytest.mark.parametrize("headers", SAME_SITE_HEADERS)
async def test_a_same_site_login_or_one_without_those_headers_passes(
    gateway: Gateway, headers: dict[str, str]
) -> None:
    gateway.auth_server.handler = any_success
    login = await gateway.client.post("/api/v1/sessions", json=CREDENTIALS, headers=headers)
    signup = await gateway.client.post("/api/v1/users", json=CREDENTIALS, headers=headers)
    assert (login.status_code, signup.status_code) == (200, 201)


@pytest.mark.parametrize("headers", CROSS_SITE_HEADERS)
async def test_cross_site_calls_with_the_session_cookie_are_refused(
    gateway: Gateway, headers: dict[str, str]
) -> None:
    gateway.auth_server.handler = any_success
    cookie = {"Cookie": f"session={gateway.token()}", "X-CSRF-Token": gateway.csrf_token()}
    for method, path in [
        ("PATCH", "/api/v1/me"),
        ("DELETE", "/api/v1/sessions/current"),
        ("PUT", "/api/v1/me/avatar"),
        ("POST", "/profile/nickname"),
        ("POST", "/logout"),
    ]:
        response = await gateway.client.request(
            method, path, json={"nickname": "Evil"}, headers={**cookie, **headers}
        )
        assert_refused(response)
    assert gateway.auth_server.calls == []


async def test_what_neither_sets_nor_uses_the_cookie_is_not_judged(gateway: Gateway) -> None:
    gateway.auth_server.handler = any_success
    evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    # A Bearer call, and the partner API, which sets no cookie.
    bearer = await gateway.client.patch(
        "/api/v1/me",
        json={"nickname": "Ann"},
        headers={"Authorization": f"Bearer {gateway.token()}", **evil},
    )
    partner = await gateway.client.post("/open_api/v1/authenticate", json=CREDENTIALS, headers=evil)
    assert (bearer.status_code, partner.status_code) == (200, 200)
    # Safe methods: links from other sites keep working.
    link = await gateway.client.get(
        "/profile", headers={"Cookie": f"session={gateway.token()}", **evil}
    )
    assert link.status_code == 200
    login_page = await gateway.client.get("/login", headers=evil)
    assert login_page.status_code == 200


async def test_two_origin_headers_are_refused(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/api/v1/sessions",
        json=CREDENTIALS,
        headers=[("Origin", OWN_ORIGIN), ("Origin", "https://evil.example")],
    )
    assert_refused(response)


async def test_the_allowed_origins_replace_the_own_origin(data_stores: DataStores) -> None:
    allowed = ("https://app.example", "http://gatehouse.test:8080")
    async with running_gateway(data_stores, allowed_origins=allowed) as configured:
        configured.auth_server.handler = any_success
        for origin in allowed:
            response = await configured.client.post(
                "/api/v1/sessions", json=CREDENTIALS, headers={"Origin": origin}
            )
            assert response.status_code == 200, origin
        own = await configured.client.post(
            "/api/v1/sessions", json=CREDENTIALS, headers={"Origin": OWN_ORIGIN}
        )
        assert_refused(own)


async def test_under_https_the_own_origin_is_https(data_stores: DataStores) -> None:
    async with running_gateway(data_stores, cookie_secure=True) as secure:
        secure.auth_server.handler = any_success
        tls = await secure.client.post(
            "/api/v1/sessions", json=CREDENTIALS, headers={"Origin": "https://gatehouse.test"}
        )
        assert tls.status_code == 200
        plain = await secure.client.post(
            "/api/v1/sessions", json=CREDENTIALS, headers={"Origin": OWN_ORIGIN}
        )
        assert_refused(plain)


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("ok")(scope, receive, send)


@pytest.mark.parametrize(("forwarded_https", "status"), [(None, 403), (True, 200), (False, 403)])
async def test_a_trusted_proxy_can_say_the_client_used_https(
    forwarded_https: bool | None, status: int
) -> None:
    guard = CrossSiteGuard(
        ok, allowed_origins=(), cookie_secure=False, forwarded_https=lambda scope: forwarded_https
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=guard), base_url="http://gatehouse.test"
    ) as client:
        response = await client.post("/login", headers={"Origin": "https://gatehouse.test"})
    assert response.status_code == status


async def test_the_app_takes_https_from_a_trusted_proxy_only(data_stores: DataStores) -> None:
    """Behind a TLS-terminating proxy in GATEHOUSE_TRUSTED_PROXIES, the own origin is https."""
    headers = {"Origin": "https://gatehouse.test", "X-Forwarded-Proto": "https"}
    async with running_gateway(
        data_stores, trusted_proxies=parse_trusted_proxies("127.0.0.0/8")
    ) as behind_proxy:
        behind_proxy.auth_server.handler = any_success
        response = await behind_proxy.client.post(
            "/api/v1/sessions", json=CREDENTIALS, headers=headers
        )
        assert response.status_code == 200
    async with running_gateway(data_stores) as direct:
        direct.auth_server.handler = any_success
        response = await direct.client.post("/api/v1/sessions", json=CREDENTIALS, headers=headers)
        assert_refused(response)
