"""The account flow end to end, over both HTTP processes, on real MariaDB, Redis and etcd."""

from __future__ import annotations

import asyncio

import httpx

from tests.system.support import bearer, new_username


async def test_signup_login_profile_update_logout_across_two_http_processes(
    clients: list[httpx.AsyncClient],
) -> None:
    first, second = clients
    username = new_username("Flow")
    created = await first.post(
        "/api/v1/users", json={"username": username, "password": "correct horse"}
    )
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["username"] == username and user["nickname"] == username
    assert isinstance(user["id"], str) and user["id"].isdigit()
    assert (
        user["avatar_url"] == f"/avatars/default/{user['id']}.svg"
    )  # never null: a default picture

    login = await second.post(
        "/api/v1/sessions", json={"username": username.lower(), "password": "correct horse"}
    )
    assert login.status_code == 200, login.text
    session = login.json()
    assert session["token_type"] == "Bearer" and session["user"]["id"] == user["id"]
    assert session["expires_at"].endswith("Z")
    cookie = login.headers["set-cookie"]
    assert (
        f"session={session['token']}" in cookie
        and "HttpOnly" in cookie
        and "SameSite=Lax" in cookie
    )
    token = session["token"]

    me = await first.get("/api/v1/me", headers=bearer(token))
    assert me.status_code == 200 and me.json()["username"] == username

    patched = await second.patch("/api/v1/me", headers=bearer(token), json={"nickname": "Zoë 🚀"})
    assert patched.status_code == 200 and patched.json()["nickname"] == "Zoë 🚀"

    me_again = await first.get("/api/v1/me", headers=bearer(token))
    assert me_again.json()["nickname"] == "Zoë 🚀"

    logout = await second.delete("/api/v1/sessions/current", headers=bearer(token))
    assert logout.status_code == 204
    assert "session=" in logout.headers.get("set-cookie", "")

    for client in clients:
        after = await client.get("/api/v1/me", headers=bearer(token))
        assert after.status_code == 401
        assert after.json()["error"]["code"] == "unauthenticated"


async def test_cookie_authenticates_and_bearer_wins(clients: list[httpx.AsyncClient]) -> None:
    client = clients[0]
    first_user, second_user = new_username("c"), new_username("c")
    tokens = []
    for username in (first_user, second_user):
        assert (
            await client.post("/api/v1/users", json={"username": username, "password": "password1"})
        ).status_code == 201
        login = await client.post(
            "/api/v1/sessions", json={"username": username, "password": "password1"}
        )
        tokens.append(login.json()["token"])
    client.cookies.clear()
    client.cookies.set("session", tokens[0])
    try:
        by_cookie = await client.get("/api/v1/me")
        assert by_cookie.json()["username"] == first_user
        both = await client.get("/api/v1/me", headers=bearer(tokens[1]))
        assert both.json()["username"] == second_user
    finally:
        client.cookies.clear()


async def test_same_username_different_case_is_one_account(
    clients: list[httpx.AsyncClient],
) -> None:
    client = clients[0]
    username = new_username("Case")
    assert (
        await client.post("/api/v1/users", json={"username": username, "password": "password1"})
    ).status_code == 201
    again = await client.post(
        "/api/v1/users", json={"username": username.upper(), "password": "password1"}
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "username_taken"
    login = await client.post(
        "/api/v1/sessions", json={"username": username.upper(), "password": "password1"}
    )
    assert login.json()["user"]["username"] == username  # stored as first registered


async def test_fifty_concurrent_signups_of_one_username(clients: list[httpx.AsyncClient]) -> None:
    username = new_username("race")
    responses = await asyncio.gather(
        *(
            clients[i % 2].post(
                "/api/v1/users", json={"username": username, "password": "password1"}
            )
            for i in range(50)
        )
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(201) == 1, statuses
    assert statuses.count(409) == 49, statuses
    assert all(
        r.json()["error"]["code"] == "username_taken" for r in responses if r.status_code == 409
    )


async def test_wrong_password_and_unknown_user_get_one_body(
    clients: list[httpx.AsyncClient],
) -> None:
    client = clients[0]
    username = new_username("w")
    await client.post("/api/v1/users", json={"username": username, "password": "password1"})
    wrong = await client.post(
        "/api/v1/sessions", json={"username": username, "password": "password2"}
    )
    unknown = await client.post(
        "/api/v1/sessions", json={"username": new_username("nobody"), "password": "password2"}
    )
    malformed = await client.post("/api/v1/sessions", json={"username": "x", "password": "p"})
    assert wrong.status_code == unknown.status_code == malformed.status_code == 401
    assert wrong.json() == unknown.json() == malformed.json()
    assert wrong.json()["error"]["code"] == "invalid_credentials"


async def test_open_api_register_and_authenticate(clients: list[httpx.AsyncClient]) -> None:
    client = clients[1]
    username = new_username("open")
    registered = await client.post(
        "/open_api/v1/register", json={"username": username, "password": "password1"}
    )
    assert registered.status_code == 200
    assert set(registered.json()) == {"id", "username"}
    duplicate = await client.post(
        "/open_api/v1/register", json={"username": username, "password": "password1"}
    )
    assert duplicate.status_code == 409
    token = await client.post(
        "/open_api/v1/authenticate", json={"username": username, "password": "password1"}
    )
    assert token.status_code == 200 and set(token.json()) == {"token"}
    me = await client.get("/api/v1/me", headers=bearer(token.json()["token"]))
    assert me.json()["username"] == username
    wrong = await client.post(
        "/open_api/v1/authenticate", json={"username": username, "password": "password2"}
    )
    unknown = await client.post(
        "/open_api/v1/authenticate", json={"username": new_username(), "password": "password2"}
    )
    assert wrong.status_code == unknown.status_code == 404
    assert wrong.json() == unknown.json()


async def test_validation_errors_name_the_field(clients: list[httpx.AsyncClient]) -> None:
    client = clients[0]
    cases = [
        ({"username": "ab", "password": "password1"}, "invalid_username"),
        ({"username": "has space", "password": "password1"}, "invalid_username"),
        ({"username": new_username(), "password": "short"}, "invalid_password"),
        ({"username": new_username(), "password": "x" * 257}, "invalid_password"),
        (
            {"username": new_username(), "password": "password1", "nickname": "a\u0000b"},
            "invalid_nickname",
        ),
        (
            {"username": new_username(), "password": "password1", "nickname": "n" * 31},
            "invalid_nickname",
        ),
        ({"username": 5, "password": "password1"}, "invalid_request"),
        ({"password": "password1"}, "invalid_request"),
    ]
    for body, code in cases:
        response = await client.post("/api/v1/users", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["code"] == code, (body, response.text)
    lone_surrogate = (
        b'{"username": "' + new_username().encode() + b'", "password": "abc\\ud800defgh"}'
    )
    response = await client.post(
        "/api/v1/users", content=lone_surrogate, headers={"content-type": "application/json"}
    )
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_password")
    not_json = await client.post(
        "/api/v1/users", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert (not_json.status_code, not_json.json()["error"]["code"]) == (400, "invalid_json")
    too_big = await client.post("/api/v1/users", content=b"x" * (64 * 1024 + 1))
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "payload_too_large")
    long_password = "p" * 100 + "😀" * 150  # 250 code points, over 72 bytes
    username = new_username()
    assert (
        await client.post("/api/v1/users", json={"username": username, "password": long_password})
    ).status_code == 201
    truncated = await client.post(
        "/api/v1/sessions", json={"username": username, "password": "p" * 100}
    )
    assert truncated.status_code == 401
    full = await client.post(
        "/api/v1/sessions", json={"username": username, "password": long_password}
    )
    assert full.status_code == 200


async def test_unknown_route_and_method_are_json_errors(clients: list[httpx.AsyncClient]) -> None:
    client = clients[0]
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = await client.put("/api/v1/sessions")
    assert (
        wrong_method.status_code == 405
        and wrong_method.json()["error"]["code"] == "method_not_allowed"
    )
    garbage = await client.get("/api/v1/me", headers=bearer("not.a.jwt"))
    assert garbage.status_code == 401 and garbage.json()["error"]["code"] == "unauthenticated"
