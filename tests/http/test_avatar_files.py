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


# Another stored picture, whose store says text/html (an S3 object's metadata may say anything).
HTML_LABELLED = hashlib.sha256(b"labelled text/html").hexdigest()
PICTURE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


async def html_labelled_picture(envelope: pb.Envelope) -> Answer:
    reply = pb.GetBlobReply(content_type="text/html", data=b"<html><script>1</script></html>")
    return Answer(payload=reply.SerializeToString())


async def test_an_uploaded_picture_is_served_as_webp_whatever_its_store_says(
    gateway: Gateway,
) -> None:
    gateway.auth_server.handler = html_labelled_picture
    response = await gateway.client.get(f"/avatars/9/{HTML_LABELLED}.webp")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/webp"


async def test_every_avatars_answer_is_sandboxed_and_not_sniffed(gateway: Gateway) -> None:
    async def store(envelope: pb.Envelope) -> Answer:
        if pb.GetBlobRequest.FromString(envelope.payload).key.startswith("9/3"):
            return Answer(pb.STATUS_UNAVAILABLE, reason="database_unavailable")
        return await stored_picture(envelope)

    gateway.auth_server.handler = store
    answers = [
        await gateway.client.get("/avatars/default/42.svg"),
        await gateway.client.get(
            "/avatars/default/42.svg", headers={"If-None-Match": '"default-42"'}
        ),
        await gateway.client.get(f"/avatars/9/{DIGEST}.webp"),
        await gateway.client.get(
            f"/avatars/9/{DIGEST}.webp", headers={"If-None-Match": f'"{DIGEST}"'}
        ),
        await gateway.client.get(f"/avatars/9/{'4' * 64}.webp"),  # not stored
        await gateway.client.get("/avatars/default/me.svg"),  # names no picture
        await gateway.client.get(f"/avatars/9/{'3' * 64}.webp"),  # the store fails
        await gateway.client.post("/avatars/default/42.svg"),  # not a method it serves
    ]
    assert [answer.status_code for answer in answers] == [200, 304, 200, 304, 404, 404, 503, 405]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers.get_list("content-security-policy") == [PICTURE_CSP]
    assert answers[0].headers["content-type"] == "image/svg+xml"
