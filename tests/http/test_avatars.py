"""PUT /api/v1/me/avatar through the app to a stub auth replica that keeps the profile and the
blobs: what is stored, what the profile points at, what is deleted, and what is refused."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from devstack.ports import wait_until_async
from services.contract import auth_pb2 as pb
from tests.http.gateway import Gateway
from tests.http.stub_auth_server import Answer

USER_ID = 31
OTHER_USERS_KEY = f"32/{'e' * 64}.webp"


def png(colour: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (400, 300)) -> bytes:
    output = io.BytesIO()
    Image.new("RGB", size, colour).save(output, format="PNG")
    return output.getvalue()


@dataclass
class FakeAuth:
    """Profile and blob calls of one user, answered like the auth service would."""

    avatar_key: str = ""
    blobs: dict[str, bytes] = field(default_factory=dict)
    update_answer: Answer | None = None
    older_replica: bool = False  # knows no picture_stored_here: the HTTP tier deletes
    lose_next_put: bool = False  # a concurrent change deletes the picture right after its put
    session_ended: bool = False  # ended between the put and the change
    held_method: int | None = None  # calls of this method wait for `release`
    held_call_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    deleted: list[str] = field(default_factory=list)

    async def handle(self, envelope: pb.Envelope) -> Answer:
        if envelope.method == self.held_method:
            self.held_call_arrived.set()
            await self.release.wait()
        if envelope.method == pb.METHOD_GET_PROFILE:
            return self._profile()
        if envelope.method == pb.METHOD_UPDATE_PROFILE:
            if self.update_answer is not None:
                return self.update_answer
            request = pb.UpdateProfileRequest.FromString(envelope.payload)
            if request.picture_stored_here and not self.older_replica:
                return self._change_picture(request.avatar_key)
            self.avatar_key = request.avatar_key
            return self._profile()
        if envelope.method == pb.METHOD_PUT_BLOB:
            request = pb.PutBlobRequest.FromString(envelope.payload)
            assert request.content_type == "image/webp"
            assert request.session.user_id == USER_ID and request.session.session_id
            self.blobs[request.key] = request.data
            return Answer()
        if envelope.method == pb.METHOD_DELETE_BLOB:
            deletion = pb.DeleteBlobRequest.FromString(envelope.payload)
            assert deletion.session.user_id == USER_ID and deletion.session.session_id
            self.blobs.pop(deletion.key, None)
            self.deleted.append(deletion.key)
            return Answer()
        return Answer(pb.STATUS_UNIMPLEMENTED)

    def _change_picture(self, key: str) -> Answer:
        """As the auth service's one transaction: check, point, delete the replaced blob."""
        if self.session_ended:
            if key != self.avatar_key:
                self.blobs.pop(key, None)  # named by nothing
            return Answer(pb.STATUS_UNAUTHENTICATED, reason="unauthenticated")
        if self.lose_next_put:
            self.lose_next_put = False
            self.blobs.pop(key, None)
        if key not in self.blobs:
            return Answer(pb.STATUS_INVALID, reason="picture_missing")
        replaced, self.avatar_key = self.avatar_key, key
        if replaced != key and replaced.startswith(f"{USER_ID}/"):
            self.blobs.pop(replaced, None)
        return self._profile(replaced)

    def _profile(self, replaced: str | None = None) -> Answer:
        user = pb.User(id=USER_ID, username="ann", nickname="Ann", avatar_key=self.avatar_key)
        reply = pb.ProfileReply(user=user, replaced_avatar_key=replaced)
        return Answer(payload=reply.SerializeToString())


@pytest.fixture
def fake_auth(gateway: Gateway) -> FakeAuth:
    fake = FakeAuth(blobs={OTHER_USERS_KEY: b"someone else"})
    gateway.auth_server.handler = fake.handle
    return fake


def bearer(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.token(user_id=USER_ID)}"}


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


async def test_a_raw_upload_is_stored_and_becomes_the_picture(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    response = await gateway.client.put("/api/v1/me/avatar", content=png(), headers=bearer(gateway))
    assert response.status_code == 200, response.text
    (key,) = set(fake_auth.blobs) - {OTHER_USERS_KEY}
    assert response.json() == {"avatar_url": f"/avatars/{key}"}
    assert fake_auth.avatar_key == key and key.startswith(f"{USER_ID}/")
    stored = Image.open(io.BytesIO(fake_auth.blobs[key]))
    assert (stored.format, stored.size) == ("WEBP", (256, 256))


async def test_a_multipart_upload_in_the_field_file(gateway: Gateway, fake_auth: FakeAuth) -> None:
    response = await gateway.client.put(
        "/api/v1/me/avatar", files={"file": ("me.png", png(), "image/png")}, headers=bearer(gateway)
    )
    assert response.status_code == 200, response.text
    assert fake_auth.avatar_key in fake_auth.blobs


def multipart_upload(picture: bytes, content_type: str) -> tuple[bytes, dict[str, str]]:
    """The multipart body httpx makes for `picture` in the field `file`, under the
    Content-Type `content_type` (its boundary is "b")."""
    request = httpx.Request("PUT", "http://x/", files={"file": ("me.png", picture, "image/png")})
    boundary = request.headers["content-type"].partition("boundary=")[2]
    return request.read().replace(boundary.encode(), b"b"), {"Content-Type": content_type}


async def test_a_multipart_upload_is_known_by_its_media_type_in_any_case(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    """Media types are case-insensitive: one in capitals still has the multipart body's
    allowance and is read as a form, not as a picture that is not one."""
    picture = png()
    body, headers = multipart_upload(picture, "Multipart/Form-Data; boundary=b")
    response = await gateway.client.put(
        "/api/v1/me/avatar", content=body, headers={**headers, **bearer(gateway)}
    )
    assert response.status_code == 200, response.text
    assert fake_auth.avatar_key in fake_auth.blobs


async def test_a_multipart_upload_in_another_charset_is_refused(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    body, headers = multipart_upload(png(), "multipart/form-data; boundary=b; charset=punycode")
    response = await gateway.client.put(
        "/api/v1/me/avatar", content=body, headers={**headers, **bearer(gateway)}
    )
    assert error_of(response) == (400, "invalid_request")
    assert "charset must be UTF-8" in response.json()["error"]["message"]
    assert fake_auth.avatar_key not in fake_auth.blobs


async def test_a_multipart_upload_without_the_field_file(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    response = await gateway.client.put(
        "/api/v1/me/avatar",
        files={"picture": ("me.png", png(), "image/png")},
        headers=bearer(gateway),
    )
    assert error_of(response) == (400, "invalid_request")
    assert "`file`" in response.json()["error"]["message"]


@pytest.mark.parametrize("older_replica", [False, True], ids=["in the change", "afterwards"])
async def test_replacing_deletes_only_this_users_old_picture(
    gateway: Gateway, fake_auth: FakeAuth, older_replica: bool
) -> None:
    """The auth service deletes the replaced blob in the change's transaction; a replica older
    than that (no replaced_avatar_key in its reply) leaves it to the HTTP tier, as before."""
    fake_auth.older_replica = older_replica
    first = (
        await gateway.client.put(
            "/api/v1/me/avatar", content=png((255, 0, 0)), headers=bearer(gateway)
        )
    ).json()
    second = (
        await gateway.client.put(
            "/api/v1/me/avatar", content=png((0, 0, 255)), headers=bearer(gateway)
        )
    ).json()
    assert first != second
    assert set(fake_auth.blobs) == {OTHER_USERS_KEY, second["avatar_url"].removeprefix("/avatars/")}
    assert len(fake_auth.deleted) == (1 if older_replica else 0)


async def test_a_picture_deleted_by_a_concurrent_change_is_stored_again(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    fake_auth.lose_next_put = True
    response = await gateway.client.put("/api/v1/me/avatar", content=png(), headers=bearer(gateway))
    assert response.status_code == 200
    assert fake_auth.avatar_key in fake_auth.blobs
    puts = [c for c in gateway.auth_server.calls if c.method == pb.METHOD_PUT_BLOB]
    assert len(puts) == 2


async def test_a_client_leaving_while_its_picture_is_stored_leaves_no_picture_behind(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    """Once the picture is decoded, storing it, the change and the replaced picture's deletion
    run to their end: a client gone meanwhile left a stored blob that no profile named."""
    fake_auth.held_method = pb.METHOD_PUT_BLOB
    upload = asyncio.create_task(
        gateway.client.put("/api/v1/me/avatar", content=png(), headers=bearer(gateway))
    )
    await asyncio.wait_for(fake_auth.held_call_arrived.wait(), 10)
    upload.cancel()
    await asyncio.gather(upload, return_exceptions=True)
    fake_auth.release.set()
    await wait_until_async(
        lambda: fake_auth.avatar_key != "", 10.0, "the change to be applied after all"
    )
    assert set(fake_auth.blobs) == {OTHER_USERS_KEY, fake_auth.avatar_key}


async def test_the_same_picture_again_keeps_its_blob(gateway: Gateway, fake_auth: FakeAuth) -> None:
    for _ in range(2):
        response = await gateway.client.put(
            "/api/v1/me/avatar", content=png(), headers=bearer(gateway)
        )
        assert response.status_code == 200
    assert fake_auth.avatar_key in fake_auth.blobs


async def test_a_previous_key_of_another_user_is_never_deleted(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    fake_auth.avatar_key = OTHER_USERS_KEY  # cannot happen, but must not cost someone their picture
    response = await gateway.client.put("/api/v1/me/avatar", content=png(), headers=bearer(gateway))
    assert response.status_code == 200
    assert OTHER_USERS_KEY in fake_auth.blobs


async def test_a_refused_profile_update_deletes_the_new_blob(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    """The session ended after the put: the change's refusal deletes the new blob (a DeleteBlob
    with that session would be refused)."""
    fake_auth.session_ended = True
    response = await gateway.client.put("/api/v1/me/avatar", content=png(), headers=bearer(gateway))
    assert error_of(response) == (401, "unauthenticated")
    assert set(fake_auth.blobs) == {OTHER_USERS_KEY}
    assert fake_auth.deleted == []


async def test_an_unknown_update_outcome_keeps_the_new_blob(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    # UNAVAILABLE may come after the update committed: the profile may point at the blob.
    fake_auth.update_answer = Answer(pb.STATUS_UNAVAILABLE, reason="database_unavailable")
    response = await gateway.client.put("/api/v1/me/avatar", content=png(), headers=bearer(gateway))
    assert error_of(response) == (503, "unavailable")
    assert len(fake_auth.blobs) == 2


@pytest.mark.parametrize("multipart", [False, True], ids=["raw", "multipart"])
async def test_an_upload_over_the_limit_is_413_before_any_change(
    gateway: Gateway, fake_auth: FakeAuth, multipart: bool
) -> None:
    too_big = b"\0" * (gateway.settings.max_avatar_bytes + 1)
    if multipart:
        response = await gateway.client.put(
            "/api/v1/me/avatar",
            files={"file": ("big.png", too_big, "image/png")},
            headers=bearer(gateway),
        )
    else:
        response = await gateway.client.put(
            "/api/v1/me/avatar", content=too_big, headers=bearer(gateway)
        )
    assert error_of(response) == (413, "payload_too_large")
    # A declared oversize is refused before any call; a multipart body is read only after the
    # session has proved live, and goes no further.
    expected = [pb.METHOD_GET_PROFILE] if multipart else []
    assert [call.method for call in gateway.auth_server.calls] == expected


async def test_a_chunked_upload_over_the_limit_is_413(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(6):
            yield b"\0" * (1024 * 1024)

    response = await gateway.client.put(
        "/api/v1/me/avatar", content=chunks(), headers=bearer(gateway)
    )
    assert error_of(response) == (413, "payload_too_large")


@pytest.mark.parametrize(
    ("upload", "expected"),
    [
        (b"plain text, no picture", (415, "unsupported_media_type")),
        (b"", (400, "invalid_request")),
    ],
    ids=["not an image", "empty"],
)
async def test_bad_uploads_are_refused_after_the_session_check_alone(
    gateway: Gateway, fake_auth: FakeAuth, upload: bytes, expected: tuple[int, str]
) -> None:
    response = await gateway.client.put(
        "/api/v1/me/avatar", content=upload, headers=bearer(gateway)
    )
    assert error_of(response) == expected
    assert [call.method for call in gateway.auth_server.calls] == [pb.METHOD_GET_PROFILE]


async def test_a_broken_picture_is_refused_after_the_session_check_and_stores_nothing(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    response = await gateway.client.put(
        "/api/v1/me/avatar", content=png()[:100], headers=bearer(gateway)
    )
    assert error_of(response) == (400, "invalid_image")
    assert [call.method for call in gateway.auth_server.calls] == [pb.METHOD_GET_PROFILE]
    assert set(fake_auth.blobs) == {OTHER_USERS_KEY}


def decodes_so_far() -> float:
    return sum(
        REGISTRY.get_sample_value(
            "gatehouse_http_picture_decodes_total", {"lane": lane, "outcome": outcome}
        )
        or 0.0
        for lane in ("fast", "main")
        for outcome in ("ok", "refused", "failed", "out_of_memory", "killed")
    )


async def test_an_upload_of_an_ended_session_is_refused_without_decoding(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    async def session_ended(envelope: pb.Envelope) -> Answer:
        return Answer(pb.STATUS_UNAUTHENTICATED, reason="session_ended")

    gateway.auth_server.handler = session_ended
    before = decodes_so_far()
    response = await gateway.client.put("/api/v1/me/avatar", content=png(), headers=bearer(gateway))
    assert error_of(response) == (401, "unauthenticated")
    assert decodes_so_far() == before
    # The same upload with a live session is decoded: the counter does count.
    gateway.auth_server.handler = fake_auth.handle
    accepted = await gateway.client.put("/api/v1/me/avatar", content=png(), headers=bearer(gateway))
    assert accepted.status_code == 200, accepted.text
    assert decodes_so_far() == before + 1


@pytest.mark.parametrize("multipart", [False, True], ids=["raw", "multipart"])
async def test_the_session_is_checked_before_the_upload_body_is_read(
    gateway: Gateway, fake_auth: FakeAuth, multipart: bool
) -> None:
    """A revoked session's upload must not be buffered: the auth service is asked first."""
    calls_when_the_body_was_first_read: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        calls_when_the_body_was_first_read.append(len(gateway.auth_server.calls))
        yield picture_body
        yield b"" if not multipart else tail

    async def session_ended(envelope: pb.Envelope) -> Answer:
        return Answer(pb.STATUS_UNAUTHENTICATED, reason="session_ended")

    gateway.auth_server.handler = session_ended
    headers = bearer(gateway)
    picture_body, tail = png(), b""
    if multipart:
        boundary = "gatehouse-test-boundary"
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        picture_body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode() + picture_body
        tail = f"\r\n--{boundary}--\r\n".encode()
    response = await gateway.client.put("/api/v1/me/avatar", content=body(), headers=headers)
    assert error_of(response) == (401, "unauthenticated")
    assert calls_when_the_body_was_first_read[:1] in ([], [1])


async def test_uploading_needs_a_session(gateway: Gateway, fake_auth: FakeAuth) -> None:
    response = await gateway.client.put("/api/v1/me/avatar", content=png())
    assert error_of(response) == (401, "unauthenticated")


async def test_one_account_has_at_most_its_share_of_uploads_at_once(
    gateway: Gateway, fake_auth: FakeAuth
) -> None:
    """Slow uploads from several addresses must not let one account hold every place."""
    body_may_end = asyncio.Event()
    bodies_started: list[int] = []

    async def slow_body() -> AsyncIterator[bytes]:
        bodies_started.append(1)
        await body_may_end.wait()
        yield png()

    def client_at(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=gateway.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://gatehouse.test")

    clients = [client_at(f"192.0.2.{i}") for i in (1, 2, 3)]
    try:
        held = [
            asyncio.create_task(
                client.put("/api/v1/me/avatar", content=slow_body(), headers=bearer(gateway))
            )
            for client in clients[:2]
        ]
        await wait_until_async(lambda: len(bodies_started) == 2, 5.0, "two uploads to read")
        third = await clients[2].put("/api/v1/me/avatar", content=png(), headers=bearer(gateway))
        assert error_of(third) == (503, "overloaded")
        assert "from one client or account" in third.json()["error"]["message"]
        body_may_end.set()
        assert [response.status_code for response in await asyncio.gather(*held)] == [200, 200]
        again = await clients[2].put("/api/v1/me/avatar", content=png(), headers=bearer(gateway))
        assert again.status_code == 200
    finally:
        body_may_end.set()
        for client in clients:
            await client.aclose()
