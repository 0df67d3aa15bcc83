"""Cross-site requests against the real processes: logins and signups from another site are
refused, and the CSRF token is bound to the session and shared by both HTTP processes."""

from __future__ import annotations

import re

import httpx
import jwt

from tests.system.support import new_username

PASSWORD = "correct horse"
EVIL = "https://evil.example"


def cookie_value(response: httpx.Response, name: str) -> str:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{name}="):
            return header.split(";")[0].split("=", 1)[1]
    raise AssertionError(f"no {name} cookie in {response.headers.get_list('set-cookie')}")


def own_origin(client: httpx.AsyncClient) -> str:
    return str(client.base_url).rstrip("/")


async def test_a_cross_site_login_or_signup_is_refused(clients: list[httpx.AsyncClient]) -> None:
    first, second = clients
    username = new_username("xs")
    credentials = f'{{"username": "{username}", "password": "{PASSWORD}"}}'.encode()
    # The reported attack: another site's text/plain POST, which needs no CORS preflight.
    for headers in (
        {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
        {"Origin": EVIL},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        for path in ("/api/v1/users", "/api/v1/sessions"):
            response = await first.post(
                path, content=credentials, headers={"Content-Type": "text/plain", **headers}
            )
            assert response.status_code == 403, (path, headers, response.text)
            assert response.json()["error"]["code"] == "csrf_failed"
            assert "set-cookie" not in response.headers
        form = await second.post(
            "/signup", data={"username": username, "password": PASSWORD}, headers=headers
        )
        assert form.status_code == 403 and "set-cookie" not in form.headers
    # None of the signups created the account.
    nobody = await first.post("/api/v1/sessions", json={"username": username, "password": PASSWORD})
    assert nobody.status_code == 401

    # The same requests from the site itself, and from clients that send neither header.
    created = await first.post(
        "/api/v1/users",
        json={"username": username, "password": PASSWORD},
        headers={"Origin": own_origin(first), "Sec-Fetch-Site": "same-origin"},
    )
    assert created.status_code == 201, created.text
    for client, headers in ((first, {"Origin": own_origin(first)}), (second, {})):
        login = await client.post(
            "/api/v1/sessions", json={"username": username, "password": PASSWORD}, headers=headers
        )
        assert login.status_code == 200, login.text
        assert cookie_value(login, "session") == login.json()["token"]


async def test_the_csrf_token_is_bound_to_the_session_on_every_http_process(
    clients: list[httpx.AsyncClient],
) -> None:
    first, second = clients
    username = new_username("bound")
    signup = await first.post("/api/v1/users", json={"username": username, "password": PASSWORD})
    assert signup.status_code == 201

    # The login form: a pre-session token from one process, accepted by the other.
    page = await first.get("/login")
    pre_session = cookie_value(page, "csrf")
    assert f'value="{pre_session}"' in page.text
    login = await second.post(
        "/login",
        data={"username": username, "password": PASSWORD, "csrf_token": pre_session},
        headers={"Cookie": f"csrf={pre_session}", "Origin": own_origin(second)},
    )
    assert (login.status_code, login.headers["location"]) == (303, "/profile")
    session = cookie_value(login, "session")
    bound = cookie_value(login, "csrf")
    assert bound != pre_session
    cookies = f"session={session}; csrf={bound}"

    # The session's token works on both processes, for forms and for API calls.
    for number, client in enumerate(clients):
        changed = await client.post(
            "/profile/nickname",
            data={"nickname": f"Form {number}", "csrf_token": bound},
            headers={"Cookie": cookies},
        )
        assert (changed.status_code, changed.headers["location"]) == (
            303,
            "/profile?saved=nickname",
        )
        patched = await client.patch(
            "/api/v1/me",
            json={"nickname": f"Api {number}"},
            headers={"Cookie": cookies, "X-CSRF-Token": bound},
        )
        assert patched.status_code == 200, patched.text

    # Refused: the pre-session token after the login, a planted cookie echoed back, and the
    # token of another session of the same account.
    other_login = await first.post(
        "/api/v1/sessions", json={"username": username, "password": PASSWORD}
    )
    other_sessions_token = cookie_value(other_login, "csrf")
    assert other_sessions_token != bound
    for csrf_cookie, echoed in (
        (pre_session, pre_session),
        ("x", "x"),
        ("A" * 43, "A" * 43),
        (other_sessions_token, other_sessions_token),
    ):
        for client in clients:
            planted = {"Cookie": f"session={session}; csrf={csrf_cookie}"}
            response = await client.patch(
                "/api/v1/me",
                json={"nickname": "Planted"},
                headers={**planted, "X-CSRF-Token": echoed},
            )
            assert response.status_code == 403, (csrf_cookie, response.text)
            assert response.json()["error"]["code"] == "csrf_failed"
            form = await client.post(
                "/profile/nickname",
                data={"nickname": "Planted", "csrf_token": echoed},
                headers=planted,
            )
            assert form.status_code == 403
    me = await first.get("/api/v1/me", headers={"Cookie": f"session={session}"})
    assert me.json()["nickname"] == "Api 1"

    # A session cookie from another site's request: refused even with the right token.
    cross = await second.patch(
        "/api/v1/me",
        json={"nickname": "Evil"},
        headers={"Cookie": cookies, "X-CSRF-Token": bound, "Origin": EVIL},
    )
    assert cross.status_code == 403


async def test_tokens_carry_issuer_and_audience(clients: list[httpx.AsyncClient]) -> None:
    client = clients[0]
    username = new_username("claims")
    await client.post("/api/v1/users", json={"username": username, "password": PASSWORD})
    login = await client.post("/api/v1/sessions", json={"username": username, "password": PASSWORD})
    claims = jwt.decode(login.json()["token"], options={"verify_signature": False})
    assert (claims["iss"], claims["aud"]) == ("gatehouse", "gatehouse")


async def test_invisible_nicknames_are_refused(clients: list[httpx.AsyncClient]) -> None:
    first, second = clients
    for nickname in ("\u3164", "\u2800\u2800", "\u115f\u1160", "\u3000", " "):
        signup = await first.post(
            "/api/v1/users",
            json={"username": new_username("inv"), "password": PASSWORD, "nickname": nickname},
        )
        assert signup.status_code == 400, (repr(nickname), signup.text)
        assert signup.json()["error"]["code"] == "invalid_nickname"
    username = new_username("vis")
    await first.post("/api/v1/users", json={"username": username, "password": PASSWORD})
    token = (
        await first.post("/api/v1/sessions", json={"username": username, "password": PASSWORD})
    ).json()["token"]
    refused = await second.patch(
        "/api/v1/me", json={"nickname": "\uffa0"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "invalid_nickname")
    kept = await second.patch(
        "/api/v1/me", json={"nickname": "\u3164J"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert kept.status_code == 200 and kept.json()["nickname"] == "\u3164J"
    assert re.search(r"visible", refused.json()["error"]["message"])
