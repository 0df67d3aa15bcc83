"""A person's own sessions through the whole system (two auth replicas, two HTTP processes):
the list, ending one or all of them, the export, and "log out everywhere" across replicas,
during a Redis outage and after Redis restarts empty."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterable

import httpx
import pytest
from PIL import Image

from devstack.gatehouse import Gatehouse
from devstack.ports import wait_until_async
from devstack.stack import DataStores
from tests.system.support import bearer, new_username, sample_sum, scrape

PASSWORD = "password1"
# Every HTTP process must refuse an ended session within this (issue 14).
END_VISIBLE_WITHIN = 1.0


async def sign_up(client: httpx.AsyncClient) -> str:
    username = new_username("s")
    created = await client.post("/api/v1/users", json={"username": username, "password": PASSWORD})
    assert created.status_code == 201, created.text
    return username


async def log_in(
    client: httpx.AsyncClient, username: str, user_agent: str = "pytest-sessions/1"
) -> httpx.Response:
    login = await client.post(
        "/api/v1/sessions",
        json={"username": username, "password": PASSWORD},
        headers={"User-Agent": user_agent},
    )
    assert login.status_code == 200, login.text
    client.cookies.clear()  # every call below says how it authenticates
    return login


async def token_of(client: httpx.AsyncClient, username: str) -> str:
    token: str = (await log_in(client, username)).json()["token"]
    return token


async def listed(client: httpx.AsyncClient, token: str) -> list[dict[str, object]]:
    answer = await client.get("/api/v1/sessions", headers=bearer(token))
    assert answer.status_code == 200, answer.text
    sessions: list[dict[str, object]] = answer.json()["sessions"]
    return sessions


def current_id(sessions: list[dict[str, object]]) -> str:
    (current,) = [session for session in sessions if session["current"]]
    return str(current["id"])


async def statuses(
    clients: Iterable[httpx.AsyncClient], tokens: Iterable[str], path: str = "/api/v1/me"
) -> set[int]:
    return {
        (await client.get(path, headers=bearer(token))).status_code
        for client in clients
        for token in tokens
    }


async def ended_everywhere(clients: list[httpx.AsyncClient], tokens: list[str]) -> bool:
    return await statuses(clients, tokens) == {401}


async def sessions_cached_live(clients: list[httpx.AsyncClient], count: int = 3) -> list[str]:
    """Tokens of `count` sessions of one new user, each read once through every HTTP process,
    so that Redis holds them as live."""
    username = await sign_up(clients[0])
    tokens = [await token_of(clients[i % 2], username) for i in range(count)]
    assert await statuses(clients, tokens) == {200}
    return tokens


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def cookie_cleared(response: httpx.Response) -> bool:
    return any(
        value.startswith("session=;") and "Max-Age=0" in value
        for value in response.headers.get_list("set-cookie")
    )


# GET /api/v1/sessions


async def test_a_new_session_is_listed_at_once_with_its_device_and_address(
    clients: list[httpx.AsyncClient], gatehouse: Gatehouse
) -> None:
    username = await sign_up(clients[0])
    long_agent = "Mozilla/5.0 " + "x" * 400
    first = (await log_in(clients[0], username, long_agent)).json()["token"]
    # From another loopback address, through the other HTTP process.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.7")
    async with httpx.AsyncClient(
        base_url=gatehouse.url(1), transport=transport, timeout=15.0, trust_env=False
    ) as other_address:
        second = (await log_in(other_address, username, "curl/8.5")).json()["token"]
        sessions = await listed(other_address, second)  # right after the login
    assert [s["user_agent"] for s in sessions] == ["curl/8.5", long_agent[:256]]
    assert [s["ip"] for s in sessions] == ["127.0.0.7", "127.0.0.1"]
    assert [s["current"] for s in sessions] == [True, False]
    for session in sessions:
        assert set(session) == {
            "id",
            "created_at",
            "expires_at",
            "last_seen_at",
            "user_agent",
            "ip",
            "current",
        }
        assert str(session["created_at"]).endswith("Z") and str(session["expires_at"]).endswith("Z")
        assert session["id"] not in (first, second) and str(session["id"]) not in first + second
    assert (await clients[0].get("/api/v1/sessions")).status_code == 401


async def test_last_use_is_recorded_after_a_read_without_a_write_per_read(
    clients: list[httpx.AsyncClient],
) -> None:
    username = await sign_up(clients[0])
    token = await token_of(clients[0], username)
    for _ in range(5):
        assert (await clients[0].get("/api/v1/me", headers=bearer(token))).status_code == 200

    async def recorded() -> bool:
        return (await listed(clients[1], token))[0]["last_seen_at"] is not None

    await wait_until_async(recorded, 10.0, "last_seen_at to be recorded")


# DELETE /api/v1/sessions/{id}


async def test_an_ended_session_fails_on_every_http_process_within_a_second(
    clients: list[httpx.AsyncClient],
) -> None:
    username = await sign_up(clients[0])
    keeper = await token_of(clients[0], username)
    victim = await token_of(clients[1], username)
    assert await statuses(clients, [victim]) == {200}  # cached as live everywhere
    victim_id = current_id(await listed(clients[0], victim))
    ended = await clients[0].delete(f"/api/v1/sessions/{victim_id}", headers=bearer(keeper))
    assert ended.status_code == 204, ended.text
    assert not cookie_cleared(ended)  # not the calling session
    answered = time.monotonic()
    await wait_until_async(
        lambda: ended_everywhere(clients, [victim]), END_VISIBLE_WITHIN, "the ended session fails"
    )
    assert time.monotonic() - answered < END_VISIBLE_WITHIN
    assert await statuses(clients, [keeper]) == {200}
    assert victim_id not in [s["id"] for s in await listed(clients[1], keeper)]


async def test_one_answer_for_an_unknown_malformed_ended_or_foreign_session_id(
    clients: list[httpx.AsyncClient],
) -> None:
    username = await sign_up(clients[0])
    token = await token_of(clients[0], username)
    other_token = await token_of(clients[0], await sign_up(clients[0]))
    foreign = current_id(await listed(clients[0], other_token))
    ended = await token_of(clients[0], username)
    ended_id = current_id(await listed(clients[0], ended))
    assert (
        await clients[0].delete(f"/api/v1/sessions/{ended_id}", headers=bearer(token))
    ).status_code == 204
    wrong_ids = [foreign, ended_id, "unknownunknownunknown1", "x" * 5000, "a%20b", "%E2%9C%93"]
    answers = [
        await clients[1].delete(f"/api/v1/sessions/{wrong}", headers=bearer(token))
        for wrong in wrong_ids
    ]
    assert [(a.status_code, error_code(a)) for a in answers] == [(404, "session_not_found")] * len(
        wrong_ids
    )
    assert len({a.json()["error"]["message"] for a in answers}) == 1
    assert await statuses(clients, [other_token]) == {200}  # someone else's stays
    dead = await clients[0].delete(f"/api/v1/sessions/{foreign}", headers=bearer(ended))
    assert dead.status_code == 401


async def test_a_cookie_call_needs_the_csrf_token_and_ending_ones_own_clears_the_cookie(
    clients: list[httpx.AsyncClient],
) -> None:
    client = clients[0]
    username = await sign_up(client)
    login = await log_in(client, username)
    token, csrf = login.cookies["session"], login.cookies["csrf"]
    own_id = current_id(await listed(client, token))
    cookies = {"Cookie": f"session={token}; csrf={csrf}"}
    refused = await client.delete(f"/api/v1/sessions/{own_id}", headers=cookies)
    assert (refused.status_code, error_code(refused)) == (403, "csrf_failed")
    refused_all = await client.delete("/api/v1/sessions", headers=cookies)
    assert (refused_all.status_code, error_code(refused_all)) == (403, "csrf_failed")
    assert await statuses(clients, [token]) == {200}
    ended = await client.delete(
        f"/api/v1/sessions/{own_id}", headers={**cookies, "X-CSRF-Token": csrf}
    )
    assert ended.status_code == 204 and cookie_cleared(ended)
    assert await statuses(clients, [token]) == {401}
    # "current" keeps its meaning and is never taken as an id.
    other = await token_of(client, username)
    current = await client.delete("/api/v1/sessions/current", headers=bearer(other))
    assert current.status_code == 204 and cookie_cleared(current)
    assert await statuses(clients, [other]) == {401}


# DELETE /api/v1/sessions: log out everywhere


async def test_log_out_everywhere_ends_every_session_across_both_auth_replicas(
    clients: list[httpx.AsyncClient], gatehouse: Gatehouse
) -> None:
    username = await sign_up(clients[0])
    tokens = [await token_of(clients[i % 2], username) for i in range(4)]
    other_user_token = await token_of(clients[0], await sign_up(clients[0]))
    for _ in range(3):  # each read may go to either replica: both cache them as live
        assert await statuses(clients, tokens) == {200}
    before = [refusals_served(gatehouse, index) for index in range(len(gatehouse.auth))]
    login = await log_in(clients[1], username)
    everywhere = await clients[1].delete(
        "/api/v1/sessions",
        headers={
            "Cookie": f"session={login.cookies['session']}",
            "X-CSRF-Token": login.cookies["csrf"],
        },
    )
    assert everywhere.status_code == 204 and cookie_cleared(everywhere)
    ended = [*tokens, login.cookies["session"]]
    for _ in range(5):
        assert await statuses(clients, ended) == {401}

    def both_replicas_refused() -> bool:
        after = [refusals_served(gatehouse, index) for index in range(len(gatehouse.auth))]
        return all(a > b for a, b in zip(after, before, strict=True))

    # Their /metrics may lag a moment behind what they served.
    await wait_until_async(
        lambda: asyncio.to_thread(both_replicas_refused), 5.0, "both auth replicas refused one"
    )
    assert await statuses(clients, [other_user_token]) == {200}
    assert await statuses(clients, ended, "/api/v1/sessions") == {401}


def refusals_served(gatehouse: Gatehouse, index: int) -> float:
    """GetProfile calls the auth replica answered UNAUTHENTICATED so far."""
    samples = scrape(f"http://127.0.0.1:{gatehouse.auth[index].ports['ops']}/metrics")
    return sample_sum(
        samples,
        "gatehouse_auth_rpc_handler_seconds_count",
        method="get_profile",
        status="UNAUTHENTICATED",
    )


@pytest.mark.slow
async def test_log_out_everywhere_holds_during_a_redis_outage(
    redis_restored: None, data_stores: DataStores, clients: list[httpx.AsyncClient]
) -> None:
    tokens = await sessions_cached_live(clients)
    await asyncio.to_thread(data_stores.redis.stop)
    try:
        everywhere = await clients[0].delete("/api/v1/sessions", headers=bearer(tokens[0]))
        assert everywhere.status_code == 204, everywhere.text
        for _ in range(3):
            assert await statuses(clients, tokens) == {401}
    finally:
        await asyncio.to_thread(data_stores.redis.start)
    for _ in range(3):
        assert await statuses(clients, tokens) == {401}


@pytest.mark.slow
async def test_log_out_everywhere_holds_while_redis_hangs_with_the_sessions_cached_live(
    redis_restored: None, data_stores: DataStores, clients: list[httpx.AsyncClient]
) -> None:
    """A frozen Redis keeps its "live" entries: once it answers again they must not count."""
    tokens = await sessions_cached_live(clients)
    await asyncio.to_thread(data_stores.redis.process.pause)
    try:
        everywhere = await clients[1].delete("/api/v1/sessions", headers=bearer(tokens[2]))
        assert everywhere.status_code == 204, everywhere.text
    finally:
        await asyncio.to_thread(data_stores.redis.process.resume)
    for _ in range(3):
        assert await statuses(clients, tokens) == {401}


@pytest.mark.slow
async def test_log_out_everywhere_holds_after_redis_restarts_empty(
    redis_restored: None, data_stores: DataStores, clients: list[httpx.AsyncClient]
) -> None:
    tokens = await sessions_cached_live(clients)
    everywhere = await clients[1].delete("/api/v1/sessions", headers=bearer(tokens[1]))
    assert everywhere.status_code == 204, everywhere.text
    assert await statuses(clients, tokens) == {401}
    await asyncio.to_thread(data_stores.redis.stop)  # its tombstones are lost with it
    await asyncio.to_thread(data_stores.redis.start)
    for _ in range(3):
        assert await statuses(clients, tokens) == {401}


# GET /api/v1/me/export


def a_picture() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 80, 40)).save(out, format="PNG")
    return out.getvalue()


async def test_the_export_is_a_download_of_the_profile_sessions_and_picture(
    clients: list[httpx.AsyncClient],
) -> None:
    client = clients[0]
    username = await sign_up(client)
    login = await log_in(client, username)
    token = login.json()["token"]
    other = await token_of(clients[1], username)
    plain = await client.get("/api/v1/me/export", headers=bearer(token))
    assert plain.status_code == 200, plain.text
    assert plain.json()["avatar"] is None
    uploaded = await client.put(
        "/api/v1/me/avatar",
        headers={**bearer(token), "Content-Type": "image/png"},
        content=a_picture(),
    )
    assert uploaded.status_code == 200, uploaded.text
    # Through the cookie, as the profile page's link does: a GET needs no CSRF token.
    export = await clients[1].get(
        "/api/v1/me/export", headers={"Cookie": f"session={login.cookies['session']}"}
    )
    assert export.status_code == 200, export.text
    assert export.headers["content-type"].startswith("application/json")
    assert (
        export.headers["content-disposition"] == f'attachment; filename="gatehouse-{username}.json"'
    )
    body = export.json()
    assert set(body) == {"user", "sessions", "avatar"}
    me = (await client.get("/api/v1/me", headers=bearer(token))).json()
    assert set(body["user"]) == {
        "id",
        "username",
        "nickname",
        "created_at",
        "updated_at",
        "avatar_url",
    }
    assert {key: body["user"][key] for key in me} == me
    assert body["user"]["created_at"] <= body["user"]["updated_at"]
    as_listed = await listed(client, token)  # the same session as the cookie's
    assert [(s["id"], s["current"]) for s in body["sessions"]] == [
        (s["id"], s["current"]) for s in as_listed
    ]
    assert [s["current"] for s in body["sessions"]] == [False, True]
    picture = await client.get(body["avatar"]["url"])
    assert picture.status_code == 200
    assert body["avatar"]["url"] == me["avatar_url"]
    assert body["avatar"]["bytes"] == len(picture.content)
    assert body["avatar"]["sha256"] == body["avatar"]["url"].rsplit("/", 1)[1].removesuffix(".webp")
    text = export.text
    for secret in (token, other, login.cookies["session"], "$2b$", "password_hash", "pepper"):
        assert secret not in text
    assert "hash" not in json.dumps(body)
    assert (await client.get("/api/v1/me/export")).status_code == 401
