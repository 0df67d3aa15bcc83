"""Picture uploads through the API on the whole system, with each blob store: `database`
(MySQL through the auth replicas) and `s3` (moto's S3 server)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image

from devstack import DataStores
from devstack.gatehouse import Gatehouse
from tests.s3_server import S3Server
from tests.system.support import bearer, new_username
from tests.web.conftest import S3_KEY_PREFIX

LIMIT = 5 * 1024 * 1024  # the default GATEHOUSE_MAX_AVATAR_BYTES


@dataclass
class Backend:
    name: str
    client: httpx.AsyncClient
    stored_keys: Callable[[str], list[str]]  # the keys stored under a prefix ("<user id>/")


@pytest.fixture(params=["database", "s3"])
async def backend(
    request: pytest.FixtureRequest,
    gatehouse: Gatehouse,
    data_stores: DataStores,
    s3_server: S3Server,
) -> AsyncIterator[Backend]:
    if request.param == "database":
        url = gatehouse.url(0)

        def stored_keys(prefix: str) -> list[str]:
            rows = data_stores.primary.execute(
                f"SELECT blob_key FROM `{data_stores.app_database}`.blobs WHERE blob_key LIKE %s",
                (prefix + "%",),
            )
            return sorted(row["blob_key"] for row in rows)

    else:
        url = request.getfixturevalue("s3_http_url")
        bucket = request.getfixturevalue("s3_bucket")

        def stored_keys(prefix: str) -> list[str]:
            keys = s3_server.object_keys(bucket, S3_KEY_PREFIX + prefix)
            return [key.removeprefix(S3_KEY_PREFIX) for key in keys]

    async with httpx.AsyncClient(base_url=url, timeout=15.0, trust_env=False) as client:
        yield Backend(request.param, client, stored_keys)


async def signed_up(client: httpx.AsyncClient) -> tuple[str, str]:
    """A new account's user id and session token."""
    username = new_username("pic")
    created = await client.post(
        "/api/v1/users", json={"username": username, "password": "password1"}
    )
    assert created.status_code == 201, created.text
    login = await client.post(
        "/api/v1/sessions", json={"username": username, "password": "password1"}
    )
    assert login.status_code == 200, login.text
    client.cookies.clear()
    return created.json()["id"], login.json()["token"]


def png(colour: tuple[int, int, int], size: tuple[int, int] = (800, 600)) -> bytes:
    output = io.BytesIO()
    Image.new("RGB", size, colour).save(output, format="PNG")
    return output.getvalue()


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


async def test_upload_serve_and_replace(backend: Backend) -> None:
    client = backend.client
    user_id, token = await signed_up(client)
    other_id, other_token = await signed_up(client)
    other = await client.put(
        "/api/v1/me/avatar", content=png((0, 160, 0)), headers=bearer(other_token)
    )
    assert other.status_code == 200, other.text

    me = await client.get("/api/v1/me", headers=bearer(token))
    assert me.json()["avatar_url"] == f"/avatars/default/{user_id}.svg"
    default = await client.get(me.json()["avatar_url"])
    assert (default.status_code, default.headers["content-type"]) == (200, "image/svg+xml")

    uploaded = await client.put(
        "/api/v1/me/avatar", content=png((200, 0, 0)), headers=bearer(token)
    )
    assert uploaded.status_code == 200, uploaded.text
    first_url = uploaded.json()["avatar_url"]
    assert first_url.startswith(f"/avatars/{user_id}/") and first_url.endswith(".webp")
    assert (await client.get("/api/v1/me", headers=bearer(token))).json()["avatar_url"] == first_url

    served = await client.get(first_url)
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/webp"
    assert served.headers["cache-control"] == "public, max-age=31536000, immutable"
    picture = Image.open(io.BytesIO(served.content))
    assert (picture.format, picture.size) == ("WEBP", (256, 256))
    assert backend.stored_keys(f"{user_id}/") == [first_url.removeprefix("/avatars/")]

    replaced = await client.put(
        "/api/v1/me/avatar",
        files={"file": ("blue.png", png((0, 0, 200)), "image/png")},
        headers=bearer(token),
    )
    assert replaced.status_code == 200, replaced.text
    second_url = replaced.json()["avatar_url"]
    assert second_url != first_url
    # Only this user's previous picture is gone; the other user's stays.
    assert backend.stored_keys(f"{user_id}/") == [second_url.removeprefix("/avatars/")]
    assert backend.stored_keys(f"{other_id}/") == [
        other.json()["avatar_url"].removeprefix("/avatars/")
    ]


async def test_too_big_is_413(backend: Backend) -> None:
    _, token = await signed_up(backend.client)
    too_big = b"\x89PNG" + b"\0" * LIMIT
    raw = await backend.client.put("/api/v1/me/avatar", content=too_big, headers=bearer(token))
    assert error_of(raw) == (413, "payload_too_large")
    multipart = await backend.client.put(
        "/api/v1/me/avatar",
        files={"file": ("big.png", too_big, "image/png")},
        headers=bearer(token),
    )
    assert error_of(multipart) == (413, "payload_too_large")


async def test_not_an_image_is_415(backend: Backend) -> None:
    _, token = await signed_up(backend.client)
    response = await backend.client.put(
        "/api/v1/me/avatar",
        files={"file": ("notes.txt", b"these are notes, not a picture", "text/plain")},
        headers=bearer(token),
    )
    assert error_of(response) == (415, "unsupported_media_type")


async def test_a_bomb_and_a_broken_image_are_400(backend: Backend) -> None:
    user_id, token = await signed_up(backend.client)
    output = io.BytesIO()
    Image.new("1", (10_000, 6_000), 0).save(output, format="PNG")  # 60 Mpx in ~10 KiB
    bomb = await backend.client.put(
        "/api/v1/me/avatar", content=output.getvalue(), headers=bearer(token)
    )
    assert error_of(bomb) == (400, "invalid_image")
    broken = await backend.client.put(
        "/api/v1/me/avatar", content=png((1, 2, 3))[:120], headers=bearer(token)
    )
    assert error_of(broken) == (400, "invalid_image")
    assert backend.stored_keys(f"{user_id}/") == []
    me = await backend.client.get("/api/v1/me", headers=bearer(token))
    assert me.json()["avatar_url"] == f"/avatars/default/{user_id}.svg"


async def test_a_cookie_authenticated_upload_needs_the_csrf_header(backend: Backend) -> None:
    username = new_username("pic")
    credentials = {"username": username, "password": "password1"}
    assert (await backend.client.post("/api/v1/users", json=credentials)).status_code == 201
    login = await backend.client.post("/api/v1/sessions", json=credentials)
    token, csrf = login.cookies["session"], login.cookies["csrf"]  # the session's own token
    backend.client.cookies.clear()
    cookies = {"Cookie": f"session={token}; csrf={csrf}"}
    refused = await backend.client.put("/api/v1/me/avatar", content=png((9, 9, 9)), headers=cookies)
    assert error_of(refused) == (403, "csrf_failed")
    planted = {
        "Cookie": f"session={token}; csrf=planted-0123456789",
        "X-CSRF-Token": "planted-0123456789",
    }
    refused = await backend.client.put("/api/v1/me/avatar", content=png((9, 9, 9)), headers=planted)
    assert error_of(refused) == (403, "csrf_failed")
    accepted = await backend.client.put(
        "/api/v1/me/avatar", content=png((9, 9, 9)), headers={**cookies, "X-CSRF-Token": csrf}
    )
    assert accepted.status_code == 200, accepted.text
