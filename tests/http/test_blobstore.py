"""Choosing the blob store, and the `database` backend's calls to a stub auth replica."""

from __future__ import annotations

import pytest

from services.contract import auth_pb2 as pb
from services.foundation.config import ConfigError, load_settings
from services.foundation.rpc.protocol import RpcError
from services.http.avatars.blobstore import Blob, open_blob_store
from services.http.avatars.blobstore_database import DatabaseBlobStore
from services.http.avatars.blobstore_s3 import S3BlobStore
from services.http.settings import HttpSettings
from services.http.tokens import Session
from tests.http.gateway import TEST_CSRF_SECRET, Gateway
from tests.http.stub_auth_server import Answer


def test_the_database_store_is_the_default(gateway: Gateway) -> None:
    settings = HttpSettings(csrf_secret=TEST_CSRF_SECRET)
    assert isinstance(open_blob_store(settings, gateway.app.state.auth), DatabaseBlobStore)


def test_s3_is_chosen_by_setting(gateway: Gateway) -> None:
    settings = load_settings(
        HttpSettings,
        {
            "GATEHOUSE_BLOB_STORE": "s3",
            "GATEHOUSE_S3_BUCKET": "pictures",
            "GATEHOUSE_CSRF_SECRET": TEST_CSRF_SECRET,
        },
    )
    assert isinstance(open_blob_store(settings, gateway.app.state.auth), S3BlobStore)


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"GATEHOUSE_BLOB_STORE": "disk"}, "must be one of database, s3"),
        ({"GATEHOUSE_BLOB_STORE": "s3"}, "GATEHOUSE_S3_BUCKET"),
        ({"GATEHOUSE_MAX_AVATAR_BYTES": "0"}, "GATEHOUSE_MAX_AVATAR_BYTES"),
    ],
)
def test_bad_blob_settings_fail_at_start(environ: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(HttpSettings, {**environ, "GATEHOUSE_CSRF_SECRET": TEST_CSRF_SECRET})


async def test_the_database_store_calls_the_auth_service(gateway: Gateway) -> None:
    stored: dict[str, pb.PutBlobRequest] = {}
    deleted: list[pb.DeleteBlobRequest] = []

    async def blob_table(envelope: pb.Envelope) -> Answer:
        if envelope.method == pb.METHOD_PUT_BLOB:
            request = pb.PutBlobRequest.FromString(envelope.payload)
            stored[request.key] = request
            return Answer()
        if envelope.method == pb.METHOD_GET_BLOB:
            found = stored.get(pb.GetBlobRequest.FromString(envelope.payload).key)
            if found is None:
                return Answer(pb.STATUS_NOT_FOUND, reason="blob_not_found")
            reply = pb.GetBlobReply(content_type=found.content_type, data=found.data)
            return Answer(payload=reply.SerializeToString())
        if envelope.method == pb.METHOD_DELETE_BLOB:
            deleted.append(pb.DeleteBlobRequest.FromString(envelope.payload))
            stored.pop(deleted[-1].key, None)
            return Answer()
        return Answer(pb.STATUS_UNIMPLEMENTED)

    gateway.auth_server.handler = blob_table
    store = DatabaseBlobStore(gateway.app.state.auth)
    owner = Session(user_id=1, session_id="s1", expires_at=0.0)
    assert await store.get("1/a.webp") is None
    await store.put("1/a.webp", b"pixels", "image/webp", owner)
    assert stored["1/a.webp"].session == pb.SessionRef(user_id=1, session_id="s1")
    assert await store.get("1/a.webp") == Blob("image/webp", b"pixels")
    await store.delete("1/a.webp", owner)
    assert deleted == [
        pb.DeleteBlobRequest(key="1/a.webp", session=pb.SessionRef(user_id=1, session_id="s1"))
    ]
    assert await store.get("1/a.webp") is None


async def test_database_store_failures_are_rpc_errors(gateway: Gateway) -> None:
    async def unavailable(envelope: pb.Envelope) -> Answer:
        return Answer(pb.STATUS_UNAVAILABLE, reason="database_unavailable")

    gateway.auth_server.handler = unavailable
    with pytest.raises(RpcError):
        await DatabaseBlobStore(gateway.app.state.auth).get("1/a.webp")
