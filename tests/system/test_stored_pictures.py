"""Stored pictures are WebP, and served as WebP: the auth service refuses to store anything else,
and an HTTP process on the S3 store serves an uploaded picture's key as image/webp whatever the
object's metadata says."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import jwt
import pytest
from google.protobuf.message import Message

from devstack.gatehouse import Gatehouse, Service
from services.contract import auth_pb2 as pb
from tests.hostile_pictures import busy_picture, encoded
from tests.s3_server import CREDENTIALS, S3Server
from tests.system.support import rpc_connection, signed_up_token

HTML = b"<!doctype html><script>document.title = 'ran'</script>"
PICTURE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


async def call(stack: Gatehouse, replica: Service, method: int, request: Message) -> pb.Envelope:
    async with rpc_connection(stack, replica, "stored-pictures-test") as connection:
        return await connection.call(method, request.SerializeToString(), timeout=5.0)


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("image/png", encoded(busy_picture((64, 64)), "WEBP")),
        ("text/html", encoded(busy_picture((64, 64)), "WEBP")),
        ("image/webp", encoded(busy_picture((64, 64)), "PNG")),
        ("image/webp", HTML),
        ("image/webp", encoded(busy_picture((64, 64)), "WEBP") + HTML),
    ],
)
async def test_a_put_of_anything_but_webp_is_refused_and_stores_nothing(
    gatehouse: Gatehouse, clients: list[httpx.AsyncClient], content_type: str, data: bytes
) -> None:
    _, token = await signed_up_token(clients[0])
    claims = jwt.decode(token, options={"verify_signature": False})
    session = pb.SessionRef(user_id=int(claims["sub"]), session_id=claims["sid"])
    key = f"{session.user_id}/{hashlib.sha256(data).hexdigest()}.webp"
    replica = gatehouse.auth[0]

    put = await call(
        gatehouse,
        replica,
        pb.METHOD_PUT_BLOB,
        pb.PutBlobRequest(key=key, content_type=content_type, data=data, session=session),
    )

    assert (put.status, put.reason) == (pb.STATUS_INVALID, "not_webp"), put
    read = await call(gatehouse, replica, pb.METHOD_GET_BLOB, pb.GetBlobRequest(key=key))
    assert read.status == pb.STATUS_NOT_FOUND, read


@pytest.fixture
def s3_http(gatehouse: Gatehouse, s3_server: S3Server) -> Iterator[tuple[Service, str]]:
    """An HTTP process of the gatehouse on the S3 store, and its bucket."""
    bucket = s3_server.new_bucket()
    service = gatehouse.start_http(
        {
            "GATEHOUSE_BLOB_STORE": "s3",
            "GATEHOUSE_S3_BUCKET": bucket,
            "GATEHOUSE_S3_ENDPOINT_URL": s3_server.endpoint_url,
            **CREDENTIALS,
        }
    )
    try:
        yield service, bucket
    finally:
        service.process.stop()
        gatehouse.http.remove(service)  # other tests expect the system's own processes only


async def test_an_s3_object_labelled_html_is_served_as_webp(
    s3_http: tuple[Service, str], s3_server: S3Server
) -> None:
    service, bucket = s3_http
    key = f"42/{hashlib.sha256(HTML).hexdigest()}.webp"
    s3_server.client().put_object(
        Bucket=bucket, Key=f"avatars/{key}", Body=HTML, ContentType="text/html"
    )

    url = f"http://127.0.0.1:{service.ports['http']}"
    async with httpx.AsyncClient(base_url=url, timeout=15.0, trust_env=False) as client:
        served = await client.get(f"/avatars/{key}")

    assert served.status_code == 200, served.text
    assert served.headers["content-type"] == "image/webp"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers.get_list("content-security-policy") == [PICTURE_CSP]
