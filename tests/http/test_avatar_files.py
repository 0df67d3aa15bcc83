"""GET /avatars/<key>: default and uploaded pictures, cache headers, memory cache, 404s."""

from __future__ import annotations

import hashlib

import pytest

from services.contract import auth_pb2 as pb
from tests.http.gateway import Gateway
from tests.http.stub_auth_server import Answer

DIGEST = hashlib.sha256(b"webp bytes").hexdigest()
# Another stored picture, first asked for with If-None-Match (the app's memory outlives a test).
REVALIDATED = hashlib.sha256(b"revalidated").hexdigest()
IMMUTABLE = "public, max-age=31536000, immutable"


async def stored_picture(envelope: pb.Envelope) -> Answer:
    assert envelope.method == pb.METHOD_GET_BLOB
    if pb.GetBlobRequest.FromString(envelope.payload).key not in (
        f"9/{DIGEST}.webp",
        f"9/{REVALIDATED}.webp",
    ):
        return Answer(pb.STATUS_NOT_FOUND, reason="blob_not_found")
    return Answer(
        payload=pb.GetBlobReply(content_type="image/webp", data=b"webp bytes").SerializeToString()
    )


async def test_a_default_picture_is_drawn_without_any_call(gateway: Gateway) -> None:
    response = await gateway.client.get("/avatars/default/42.svg")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.headers["cache-control"] == IMMUTABLE
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content.startswith(b"<svg")
    assert gateway.auth_server.calls == []


async def test_an_uploaded_picture_is_served_then_remembered(gateway: Gateway) -> None:
    gateway.auth_server.handler = stored_picture
    path = f"/avatars/9/{DIGEST}.webp"
    for _ in range(3):
        response = await gateway.client.get(path)
        assert response.status_code == 200
        assert (response.headers["content-type"], response.content) == ("image/webp", b"webp bytes")
        assert response.headers["cache-control"] == IMMUTABLE
        assert response.headers["etag"] == f'"{DIGEST}"'
        assert "sandbox" in response.headers["content-security-policy"]
    assert gateway.auth_server.calls_of(pb.METHOD_GET_BLOB) == 1


async def test_a_default_picture_revalidation_is_answered_304_without_any_call(
    gateway: Gateway,
) -> None:
    default = await gateway.client.get(
        "/avatars/default/42.svg", headers={"If-None-Match": '"default-42"'}
    )
    assert (default.status_code, default.content) == (304, b"")
    assert default.headers["cache-control"] == IMMUTABLE
    assert gateway.auth_server.calls == []


async def test_an_uploaded_picture_revalidation_is_304_only_while_it_exists(
    gateway: Gateway,
) -> None:
    gateway.auth_server.handler = stored_picture
    for _ in range(2):
        response = await gateway.client.get(
            f"/avatars/9/{REVALIDATED}.webp", headers={"If-None-Match": f'"{REVALIDATED}"'}
        )
        assert (response.status_code, response.content) == (304, b"")
        assert response.headers["cache-control"] == IMMUTABLE
    assert gateway.auth_server.calls_of(pb.METHOD_GET_BLOB) == 1  # then from memory
    deleted = await gateway.client.get(
        f"/avatars/9/{'0' * 64}.webp", headers={"If-None-Match": f'"{"0" * 64}"'}
    )
    assert (deleted.status_code, deleted.json()["error"]["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    "path",
    [
        "/avatars/",
        "/avatars/9/nothex.webp",
        f"/avatars/9/{DIGEST}.png",
        f"/avatars/../9/{DIGEST}.webp",
        "/avatars/default/me.svg",
        f"/avatars/9/{DIGEST}.webp/more",
    ],
)
async def test_keys_that_name_no_picture_are_404_without_any_call(
    gateway: Gateway, path: str
) -> None:
    response = await gateway.client.get(path)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    assert gateway.auth_server.calls == []


async def test_a_picture_no_longer_stored_is_404(gateway: Gateway) -> None:
    gateway.auth_server.handler = stored_picture
    response = await gateway.client.get(f"/avatars/9/{'1' * 64}.webp")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    assert "cache-control" not in response.headers


async def test_a_store_failure_is_503(gateway: Gateway) -> None:
    async def unavailable(envelope: pb.Envelope) -> Answer:
        return Answer(pb.STATUS_UNAVAILABLE, reason="database_unavailable")

    gateway.auth_server.handler = unavailable
    response = await gateway.client.get(f"/avatars/9/{'2' * 64}.webp")
    assert (response.status_code, response.json()["error"]["code"]) == (503, "unavailable")
