"""The blob table and its RPC methods on the real MariaDB primary and replica."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from PIL import Image

from devstack import DataStores
from services.auth.accounts import AccountStore
from services.auth.blob_handlers import BlobHandlers
from services.auth.handlers import AccountHandlers
from services.auth.metrics import DB_QUERY_SECONDS
from services.auth.store.blobs import Blob, BlobTable, InvalidBlob, is_webp_container
from services.auth.store.database import Database, parse_dsn
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.contract.method import Method, ReplyT, RequestT
from services.foundation.rpc.protocol import RpcError
from services.foundation.rpc.routes import by_number


def new_key(user_id: int | str | None = None) -> str:
    owner = uuid.uuid4().int % 10**12 if user_id is None else user_id
    return f"{owner}/{os.urandom(32).hex()}.webp"


def riff(body: bytes) -> bytes:
    """`body` after a RIFF WEBP header whose size covers it."""
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) % 2)


def webp(payload: bytes) -> bytes:
    """`payload` after a lossless bitstream's signature, in a RIFF WEBP container, as the
    table takes it."""
    chunk = b"VP8L" + struct.pack("<I", len(payload) + 1) + b"\x2f" + payload
    return riff(chunk + b"\x00" * (len(chunk) % 2))


def _count(role: str) -> float:
    """get_blob queries run so far on servers of `role`, from the auth metrics."""
    for metric in DB_QUERY_SECONDS.collect():
        for sample in metric.samples:
            if (
                sample.name.endswith("_count")
                and sample.labels.get("role") == role
                and sample.labels.get("operation") == "get_blob"
            ):
                return sample.value
    return 0.0


@pytest.fixture
def blobs(primary: Database, replica: Database) -> BlobTable:
    return BlobTable(primary, [replica])


async def test_put_get_delete(blobs: BlobTable, data_stores: DataStores) -> None:
    key, data = new_key(), webp(os.urandom(50_000))
    assert await blobs.get(key) is None
    await blobs.put(key, "image/webp", data)
    assert await blobs.get(key) == Blob("image/webp", data)
    await blobs.delete(key)
    assert await blobs.get(key) is None
    await asyncio.to_thread(data_stores.replication.wait_caught_up)
    assert await blobs.get(key) is None
    await blobs.delete(key)  # deleting what is gone is no error


async def test_a_key_keeps_its_first_bytes(blobs: BlobTable) -> None:
    key = new_key()
    await blobs.put(key, "image/webp", webp(b"first"))
    await blobs.put(key, "image/webp", webp(b"second"))  # a retried put does not fail
    assert await blobs.get(key) == Blob("image/webp", webp(b"first"))


async def test_a_replicated_blob_is_read_on_the_replica(
    blobs: BlobTable, data_stores: DataStores
) -> None:
    key = new_key()
    await blobs.put(key, "image/webp", webp(b"pixels"))
    await asyncio.to_thread(data_stores.replication.wait_caught_up)
    replica_reads, primary_reads = _count("replica"), _count("primary")
    assert await blobs.get(key) == Blob("image/webp", webp(b"pixels"))
    assert (_count("replica"), _count("primary")) == (replica_reads + 1, primary_reads)


async def test_a_blob_the_replica_lacks_is_read_on_the_primary(
    blobs: BlobTable, stop_sql_thread: Callable[[], Awaitable[None]]
) -> None:
    await stop_sql_thread()
    key = new_key()
    await blobs.put(key, "image/webp", webp(b"fresh"))
    primary_reads = _count("primary")
    assert await blobs.get(key) == Blob("image/webp", webp(b"fresh"))
    assert _count("primary") == primary_reads + 1


async def test_a_blob_deleted_on_the_primary_is_not_served_by_a_replica_behind(
    blobs: BlobTable, data_stores: DataStores, stop_sql_thread: Callable[[], Awaitable[None]]
) -> None:
    key = new_key()
    await blobs.put(key, "image/webp", webp(b"deleted picture"))
    await asyncio.to_thread(data_stores.replication.wait_caught_up)
    await stop_sql_thread()  # the replica keeps the row: it applies nothing from now on
    await blobs.delete(key)
    replica_reads = _count("replica")
    assert await blobs.get(key) is None
    assert _count("replica") == replica_reads + 1  # found there, refused by the primary


async def test_while_the_primary_is_unreachable_a_replica_copy_is_served(
    blobs: BlobTable, data_stores: DataStores, replica: Database, unreachable_primary: Database
) -> None:
    key = new_key()
    await blobs.put(key, "image/webp", webp(b"pixels"))
    await asyncio.to_thread(data_stores.replication.wait_caught_up)
    cut_off = BlobTable(unreachable_primary, [replica])
    assert await cut_off.get(key) == Blob("image/webp", webp(b"pixels"))


async def test_without_replicas_the_primary_answers(primary: Database) -> None:
    blobs = BlobTable(primary, [])
    key = new_key()
    await blobs.put(key, "image/webp", webp(b"vp8"))
    assert await blobs.get(key) == Blob("image/webp", webp(b"vp8"))


@pytest.mark.parametrize(
    ("key", "content_type", "data"),
    [
        ("", "image/webp", b"x"),
        ("k" * 201, "image/webp", b"x"),
        ("caf\u00e9/1.webp", "image/webp", b"x"),
        ("line\nbreak", "image/webp", b"x"),
        ("1/a.webp", "", b"x"),
        ("1/a.webp", "t" * 101, b"x"),
        ("1/a.webp", "image/webp", b""),
        ("1/a.webp", "image/png", webp(b"x")),
        ("1/a.webp", "text/html", webp(b"x")),
        ("1/a.webp", "image/webp", b"<html><script>alert(1)</script></html>"),
        ("1/a.webp", "image/webp", webp(b"x")[:-1]),  # the RIFF size says more
        ("1/a.webp", "image/webp", webp(b"x") + b"<html>"),  # bytes after the container
        ("1/a.webp", "image/webp", b"RIFF" + webp(b"x")[4:8] + b"AVI " + b"x"),
        # Polyglots: a right RIFF WEBP header over bytes that are no WebP bitstream.
        ("1/a.webp", "image/webp", riff(b"<html><script>alert(1)</script></html>")),
        ("1/a.webp", "image/webp", riff(b"VP8L" + struct.pack("<I", 8) + b"<script>")),
        ("1/a.webp", "image/webp", riff(b"VP8 " + struct.pack("<I", 8) + b"<script>")),
        ("1/a.webp", "image/webp", riff(b"VP8L" + struct.pack("<I", 99) + b"\x2f<html>")),
        ("1/a.webp", "image/webp", riff(webp(b"x")[12:] + b"<html>")),  # no whole chunk after
        # A page in a chunk of its own beside a right bitstream, or after the extended header.
        ("1/a.webp", "image/webp", riff(webp(b"x")[12:] + chunk(b"HTML", b"<script>"))),
        ("1/a.webp", "image/webp", riff(chunk(b"VP8X", bytes(10)) + chunk(b"JUNK", b"<html>"))),
        ("1/a.webp", "image/webp", riff(chunk(b"VP8X", bytes(10)) + chunk(b"EXIF", b"<html>"))),
        ("1/a.webp", "image/webp", riff(chunk(b"VP8X", bytes(10)) + chunk(b"ANMF", b"<html>"))),
    ],
)
async def test_what_the_table_cannot_hold_is_refused(
    blobs: BlobTable, key: str, content_type: str, data: bytes
) -> None:
    with pytest.raises(InvalidBlob):
        await blobs.put(key, content_type, data)


@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("RGB", {"quality": 50}),
        ("RGBA", {"lossless": True}),
        ("RGBA", {"quality": 50}),  # the extended format: VP8X, ALPH, VP8
        ("RGB", {"exif": b"Exif\0\0"}),
    ],
)
def test_pictures_as_pillow_encodes_them_are_webp(mode: str, options: dict[str, Any]) -> None:
    encoded = io.BytesIO()
    Image.new(mode, (256, 256), "teal").save(encoded, "WEBP", **options)
    assert is_webp_container(encoded.getvalue())


# The RPC methods


async def call(
    handlers: BlobHandlers | AccountHandlers, method: Method[RequestT, ReplyT], request: RequestT
) -> ReplyT:
    """The call as the server makes it: through the method's route, payloads both ways."""
    deadline = asyncio.get_running_loop().time() + 5.0
    route = by_number(handlers.routes())[method.number]
    return method.reply_type.FromString(await route.serve(request.SerializeToString(), deadline))


async def logged_in(handlers: AccountHandlers) -> pb.SessionRef:
    """A new account's session, as the HTTP tier passes it."""
    username = f"b{uuid.uuid4().hex[:10]}"
    await call(
        handlers, methods.REGISTER, pb.RegisterRequest(username=username, password="password1")
    )
    login = await call(
        handlers,
        methods.AUTHENTICATE,
        pb.AuthenticateRequest(username=username, password="password1"),
    )
    claims = jwt.decode(login.token, options={"verify_signature": False})
    return pb.SessionRef(user_id=login.user.id, session_id=claims["sid"])


@pytest.fixture
def blob_handlers(blobs: BlobTable, store: AccountStore) -> BlobHandlers:
    return BlobHandlers(blobs, store)


async def test_blob_calls_round_trip_a_picture_sized_blob(
    blob_handlers: BlobHandlers, handlers: AccountHandlers
) -> None:
    session = await logged_in(handlers)
    # Far beyond any 256x256 WebP, within a frame.
    key, data = new_key(session.user_id), webp(os.urandom(700 * 1024))
    await call(
        blob_handlers,
        methods.PUT_BLOB,
        pb.PutBlobRequest(key=key, content_type="image/webp", data=data, session=session),
    )
    reply = await call(blob_handlers, methods.GET_BLOB, pb.GetBlobRequest(key=key))
    assert (reply.content_type, reply.data) == ("image/webp", data)
    await call(blob_handlers, methods.DELETE_BLOB, pb.DeleteBlobRequest(key=key, session=session))
    with pytest.raises(RpcError) as missing:
        await call(blob_handlers, methods.GET_BLOB, pb.GetBlobRequest(key=key))
    assert (missing.value.status, missing.value.reason) == (pb.STATUS_NOT_FOUND, "blob_not_found")


async def test_a_late_delete_keeps_the_picture_its_owners_profile_names(
    blob_handlers: BlobHandlers, handlers: AccountHandlers, store: AccountStore
) -> None:
    """A delete of an unused picture is hedged and retried (IDEMPOTENT); one that lands late,
    after the same picture (its key is its hash) was uploaded again and named by the profile,
    took it from under the profile, which then named a deleted blob."""
    session = await logged_in(handlers)
    key, data = new_key(session.user_id), webp(os.urandom(1024))
    put = pb.PutBlobRequest(key=key, content_type="image/webp", data=data, session=session)
    await call(blob_handlers, methods.PUT_BLOB, put)
    assert await store.change_picture(session.user_id, session.session_id, key) is not None
    stale = pb.DeleteBlobRequest(key=key, session=session)
    await call(blob_handlers, methods.DELETE_BLOB, stale)
    reply = await call(blob_handlers, methods.GET_BLOB, pb.GetBlobRequest(key=key))
    assert reply.data == data, "the named picture was deleted"

    # Once the profile names another picture, the old one goes (change_picture deleted it
    # already; a delete of an unnamed one still deletes).
    unnamed = new_key(session.user_id)
    put_unnamed = pb.PutBlobRequest(
        key=unnamed, content_type="image/webp", data=data, session=session
    )
    await call(blob_handlers, methods.PUT_BLOB, put_unnamed)
    await call(
        blob_handlers, methods.DELETE_BLOB, pb.DeleteBlobRequest(key=unnamed, session=session)
    )
    with pytest.raises(RpcError) as missing:
        await call(blob_handlers, methods.GET_BLOB, pb.GetBlobRequest(key=unnamed))
    assert missing.value.reason == "blob_not_found"


async def test_blob_calls_refuse_invalid_blobs(
    blob_handlers: BlobHandlers, handlers: AccountHandlers
) -> None:
    session = await logged_in(handlers)
    for method, request_message, reason in [
        (
            methods.PUT_BLOB,
            pb.PutBlobRequest(
                key=f"{session.user_id}/a.webp", content_type="image/webp", session=session
            ),
            "invalid_blob",
        ),
        (
            methods.PUT_BLOB,
            pb.PutBlobRequest(
                key=f"{session.user_id}/a.webp",
                content_type="image/png",
                data=webp(b"x"),
                session=session,
            ),
            "not_webp",
        ),
        (methods.GET_BLOB, pb.GetBlobRequest(key="k" * 201), "invalid_blob"),
    ]:
        with pytest.raises(RpcError) as refused:
            await call(blob_handlers, method, request_message)
        assert (refused.value.status, refused.value.reason) == (pb.STATUS_INVALID, reason)


async def test_blob_calls_answer_unavailable_when_mysql_is_down(
    unreachable_primary: Database, store: AccountStore
) -> None:
    with pytest.raises(RpcError) as failed:
        await call(
            BlobHandlers(BlobTable(unreachable_primary, []), store),
            methods.GET_BLOB,
            pb.GetBlobRequest(key=new_key()),
        )
    assert (failed.value.status, failed.value.reason) == (
        pb.STATUS_UNAVAILABLE,
        "database_unavailable",
    )


async def test_the_table_is_as_designed(data_stores: DataStores, primary_dsn: str) -> None:
    rows = data_stores.primary.execute(
        "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS"
        " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'blobs' ORDER BY ORDINAL_POSITION",
        (parse_dsn(primary_dsn).database,),
    )
    assert [(row["COLUMN_NAME"], row["COLUMN_TYPE"]) for row in rows] == [
        ("blob_key", "varchar(200)"),
        ("content_type", "varchar(100)"),
        ("data", "mediumblob"),
        ("created_at", "datetime(6)"),
    ]


async def test_deleting_an_account_deletes_every_blob_of_it_and_no_other(
    blob_handlers: BlobHandlers, handlers: AccountHandlers, blobs: BlobTable
) -> None:
    session, bystander = await logged_in(handlers), await logged_in(handlers)
    # The picture, and one nothing points at (an upload whose profile update never came).
    own = [new_key(session.user_id), new_key(session.user_id)]
    others = new_key(bystander.user_id)
    for key, owner in [(own[0], session), (own[1], session), (others, bystander)]:
        await call(
            blob_handlers,
            methods.PUT_BLOB,
            pb.PutBlobRequest(key=key, content_type="image/webp", data=webp(b"p"), session=owner),
        )

    reply = await call(
        handlers,
        methods.DELETE_ACCOUNT,
        pb.DeleteAccountRequest(session=session, password="password1"),
    )

    assert reply.blobs_deleted
    assert [await blobs.get(key) for key in own] == [None, None]
    assert await blobs.get(others) == Blob("image/webp", webp(b"p"))


async def test_a_key_spelling_the_owner_id_with_leading_zeros_is_refused(
    blob_handlers: BlobHandlers, handlers: AccountHandlers, blobs: BlobTable
) -> None:
    """`0<id>/...` names the same number, but the account's deletion (`<id>/%`) would miss it:
    the picture would outlive its account."""
    session = await logged_in(handlers)
    for key in [new_key(f"0{session.user_id}"), new_key(f"00{session.user_id}")]:
        with pytest.raises(RpcError) as refused:
            await call(
                blob_handlers,
                methods.PUT_BLOB,
                pb.PutBlobRequest(
                    key=key, content_type="image/webp", data=webp(b"p"), session=session
                ),
            )
        assert (refused.value.status, refused.value.reason) == (
            pb.STATUS_PERMISSION_DENIED,
            "not_blob_owner",
        )
        assert await blobs.get(key) is None


async def test_a_put_whose_account_is_deleted_before_its_row_lands_deletes_it_again(
    primary: Database, replica: Database, store: AccountStore, handlers: AccountHandlers
) -> None:
    """The session check passes, then the deletion commits (its DELETE finds no row yet), then
    the row is written: the put finds the account deleted and takes its row back."""
    session = await logged_in(handlers)

    class DeletedMeanwhile(BlobTable):
        async def put(self, key: str, content_type: str, data: bytes) -> None:
            await call(
                handlers,
                methods.DELETE_ACCOUNT,
                pb.DeleteAccountRequest(session=session, password="password1"),
            )
            await super().put(key, content_type, data)

    blobs = DeletedMeanwhile(primary, [replica])
    key = new_key(session.user_id)
    with pytest.raises(RpcError) as refused:
        await call(
            BlobHandlers(blobs, store),
            methods.PUT_BLOB,
            pb.PutBlobRequest(key=key, content_type="image/webp", data=webp(b"p"), session=session),
        )

    assert (refused.value.status, refused.value.reason) == (
        pb.STATUS_UNAUTHENTICATED,
        "account_deleted",
    )
    assert await blobs.get(key) is None
