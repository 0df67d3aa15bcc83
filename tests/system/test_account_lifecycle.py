"""PUT /api/v1/me/password and DELETE /api/v1/me end to end: two HTTP processes, two auth
replicas, real MariaDB, Redis and etcd."""

from __future__ import annotations

from typing import Any

import httpx
from PIL import Image

from tests.hostile_pictures import busy_picture, encoded
from tests.system.support import bearer, new_username

PASSWORD = "password1"
NEW_PASSWORD = "another password"
# Enough wrong passwords to pass GATEHOUSE_LOGIN_FAILURE_LIMIT (5) with room for a slow machine
# letting a delay run out between two attempts: refused attempts lengthen the delay.
MAX_WRONG_ATTEMPTS = 12


def picture(colour: str = "white") -> bytes:
    image = busy_picture((300, 300))
    Image.Image.paste(image, colour, (0, 0, 40, 40))
    return encoded(image, "PNG")


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


async def signed_up(client: httpx.AsyncClient, username: str | None = None) -> str:
    """A new account's username."""
    username = username or new_username("life")
    created = await client.post("/api/v1/users", json={"username": username, "password": PASSWORD})
    assert created.status_code == 201, created.text
    return username


async def logged_in(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> str:
    login = await client.post("/api/v1/sessions", json={"username": username, "password": password})
    assert login.status_code == 200, login.text
    client.cookies.clear()  # every call says how it authenticates
    return str(login.json()["token"])


async def change_password(
    client: httpx.AsyncClient, token: str, body: Any, **headers: str
) -> httpx.Response:
    return await client.put("/api/v1/me/password", json=body, headers={**bearer(token), **headers})


async def delete_account(client: httpx.AsyncClient, token: str, password: str) -> httpx.Response:
    return await client.request(
        "DELETE", "/api/v1/me", json={"password": password}, headers=bearer(token)
    )


async def profile_status(clients: list[httpx.AsyncClient], token: str) -> set[int]:
    return {
        (await client.get("/api/v1/me", headers=bearer(token))).status_code for client in clients
    }


# PUT /api/v1/me/password


async def test_a_password_change_ends_the_other_sessions_on_every_http_process(
    clients: list[httpx.AsyncClient],
) -> None:
    first, second = clients
    username = await signed_up(first)
    this, other = await logged_in(first, username), await logged_in(second, username)

    changed = await change_password(
        second, this, {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    )

    assert changed.status_code == 204, changed.text
    assert await profile_status(clients, this) == {200}
    assert await profile_status(clients, other) == {401}
    old = await first.post("/api/v1/sessions", json={"username": username, "password": PASSWORD})
    assert error_of(old) == (401, "invalid_credentials")
    assert await logged_in(second, username, NEW_PASSWORD)


async def test_password_change_errors(clients: list[httpx.AsyncClient]) -> None:
    client = clients[0]
    username = await signed_up(client)
    token = await logged_in(client, username)
    good = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}

    wrong = await change_password(client, token, {**good, "current_password": "not it at all"})
    assert error_of(wrong) == (403, "invalid_credentials")
    short = await change_password(client, token, {**good, "new_password": "short"})
    assert error_of(short) == (400, "invalid_password")
    missing = await change_password(client, token, {"current_password": PASSWORD})
    assert error_of(missing) == (400, "invalid_request")
    not_a_string = await change_password(client, token, {**good, "new_password": 12345678})
    assert error_of(not_a_string) == (400, "invalid_request")
    not_json = await client.put(
        "/api/v1/me/password",
        content=b"{not json",
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert error_of(not_json) == (400, "invalid_json")
    too_big = await change_password(client, token, {**good, "padding": "x" * 100_000})
    assert error_of(too_big) == (413, "payload_too_large")
    anonymous = await client.put("/api/v1/me/password", json=good)
    assert error_of(anonymous) == (401, "unauthenticated")
    by_cookie_alone = await client.put(
        "/api/v1/me/password", json=good, headers={"Cookie": f"session={token}"}
    )
    assert error_of(by_cookie_alone) == (403, "csrf_failed")
    # None of these changed it.
    assert await logged_in(client, username, PASSWORD)


async def test_wrong_current_passwords_meet_the_login_throttle(
    clients: list[httpx.AsyncClient],
) -> None:
    client = clients[0]
    username = await signed_up(client)
    token = await logged_in(client, username)
    wrong = {"current_password": "not the password", "new_password": NEW_PASSWORD}
    answers = []
    for _ in range(MAX_WRONG_ATTEMPTS):
        answer = await change_password(client, token, wrong)
        answers.append(error_of(answer))
        if answer.status_code == 429:
            assert int(answer.headers["Retry-After"]) >= 1
            break
    assert answers[-1] == (429, "too_many_attempts"), answers
    assert set(answers[:-1]) == {(403, "invalid_credentials")}
    # The throttle counts them as the account's failed logins: logging in is refused too.
    login = await client.post("/api/v1/sessions", json={"username": username, "password": PASSWORD})
    assert error_of(login) == (429, "too_many_attempts")
    deletion = await delete_account(client, token, PASSWORD)
    assert error_of(deletion) == (429, "too_many_attempts")


# DELETE /api/v1/me


async def test_a_deletion_ends_every_session_and_deletes_the_picture(
    clients: list[httpx.AsyncClient],
) -> None:
    first, second = clients
    username = await signed_up(first)
    this, other = await logged_in(first, username), await logged_in(second, username)
    uploaded = await first.put("/api/v1/me/avatar", content=picture(), headers=bearer(this))
    assert uploaded.status_code == 200, uploaded.text
    picture_url = uploaded.json()["avatar_url"]

    deleted = await delete_account(second, this, PASSWORD)

    assert deleted.status_code == 204, deleted.text
    assert "session=" in deleted.headers.get("set-cookie", "")  # the cookie is cleared
    for token in (this, other):
        assert await profile_status(clients, token) == {401}
    for client in clients:  # neither process has served it, so neither has it cached
        assert (await client.get(picture_url)).status_code == 404
    login = await first.post("/api/v1/sessions", json={"username": username, "password": PASSWORD})
    assert error_of(login) == (401, "invalid_credentials")
    again = await second.post("/api/v1/users", json={"username": username, "password": PASSWORD})
    assert error_of(again) == (409, "username_taken")


async def test_deletion_errors(clients: list[httpx.AsyncClient]) -> None:
    client = clients[0]
    username = await signed_up(client)
    token = await logged_in(client, username)

    wrong = await delete_account(client, token, "not the password")
    assert error_of(wrong) == (403, "invalid_credentials")
    no_body = await client.request("DELETE", "/api/v1/me", headers=bearer(token))
    assert error_of(no_body) == (400, "invalid_json")
    missing = await client.request("DELETE", "/api/v1/me", json={}, headers=bearer(token))
    assert error_of(missing) == (400, "invalid_request")
    anonymous = await client.request("DELETE", "/api/v1/me", json={"password": PASSWORD})
    assert error_of(anonymous) == (401, "unauthenticated")
    by_cookie_alone = await client.request(
        "DELETE", "/api/v1/me", json={"password": PASSWORD}, headers={"Cookie": f"session={token}"}
    )
    assert error_of(by_cookie_alone) == (403, "csrf_failed")
    assert await profile_status(clients, token) == {200}  # none of these deleted it
