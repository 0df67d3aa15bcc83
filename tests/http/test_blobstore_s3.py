"""The `s3` blob store against an S3 API server (moto's) started by the tests."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from devstack.ports import free_port
from services.http.avatars.blobstore import Blob
from services.http.avatars.blobstore_s3 import S3BlobStore
from services.http.errors import BlobStoreError
from services.http.settings import HttpSettings
from services.http.tokens import Session
from tests.http.gateway import TEST_CSRF_SECRET
from tests.http.thread_starts import THREAD_START_FAILURE, fail_the_next_thread_start
from tests.s3_server import CREDENTIALS, S3Server

# The S3 store writes the bucket itself: the owner's session is not sent anywhere.
OWNER = Session(user_id=7, session_id="s7", expires_at=0.0)


def store_for(s3_server: S3Server, bucket: str, **overrides: object) -> S3BlobStore:
    settings = dataclasses.replace(
        HttpSettings(
            blob_store="s3",
            s3_bucket=bucket,
            s3_endpoint_url=s3_server.endpoint_url,
            s3_timeout=2.0,
            csrf_secret=TEST_CSRF_SECRET,
        ),
        **overrides,
    )
    return S3BlobStore.from_settings(settings)


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials as a deployment gives them: the standard AWS environment variables."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


async def test_put_get_delete(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = store_for(s3_server, bucket)
    assert await store.get("7/abc.webp") is None
    await store.put("7/abc.webp", b"RIFF....WEBP", "image/webp", OWNER)
    assert await store.get("7/abc.webp") == Blob("image/webp", b"RIFF....WEBP")
    assert s3_server.object_keys(bucket) == ["avatars/7/abc.webp"]  # under the key prefix
    head = s3_server.client().head_object(Bucket=bucket, Key="avatars/7/abc.webp")
    assert head["CacheControl"] == "public, max-age=31536000, immutable"
    await store.delete("7/abc.webp", OWNER)
    assert await store.get("7/abc.webp") is None
    await store.delete("7/abc.webp", OWNER)  # an absent key is no error


async def test_the_key_prefix_is_a_setting(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    await store_for(s3_server, bucket, s3_key_prefix="").put("1/x.webp", b"x", "image/webp", OWNER)
    assert s3_server.object_keys(bucket) == ["1/x.webp"]


async def test_a_missing_bucket_is_a_blob_store_error(s3_server: S3Server) -> None:
    store = store_for(s3_server, "no-such-bucket-here")
    with pytest.raises(BlobStoreError, match="no-such-bucket-here"):
        await store.put("1/x.webp", b"x", "image/webp", OWNER)


async def test_an_unreachable_server_is_a_blob_store_error(s3_server: S3Server) -> None:
    store = store_for(
        s3_server, "bucket", s3_endpoint_url=f"http://127.0.0.1:{free_port()}", s3_timeout=0.5
    )
    with pytest.raises(BlobStoreError, match="GATEHOUSE_S3_ENDPOINT_URL"):
        await store.get("1/x.webp")


@pytest.fixture
def frozen_s3() -> Iterator[str]:
    """The URL of a server that takes connections and never answers (a frozen S3): its
    listening socket accepts none, so the kernel queues them. Closing it resets them."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


async def test_a_frozen_server_costs_a_bounded_number_of_threads_and_waits(
    s3_server: S3Server, frozen_s3: str
) -> None:
    settings = HttpSettings(
        blob_store="s3",
        s3_bucket="bucket",
        s3_endpoint_url=frozen_s3,
        s3_timeout=30.0,  # botocore's own timeouts do not end these calls in the test's time
        csrf_secret=TEST_CSRF_SECRET,
    )
    frozen = S3BlobStore.from_settings(settings)
    store = S3BlobStore(frozen._client, "bucket", "avatars/", call_deadline=0.5, max_calls=2)
    failures_before = (
        REGISTRY.get_sample_value("gatehouse_http_blob_store_failures_total", {"operation": "get"})
        or 0.0
    )
    # Tasks start in the order they are made: the first two take both threads.
    *waiting, third = [asyncio.create_task(store.get(f"1/{n}.webp")) for n in range(3)]
    with pytest.raises(BlobStoreError, match="calls to S3 were all still running after 1 s"):
        await asyncio.wait_for(third, 5.0)
    for call in waiting:
        with pytest.raises(BlobStoreError, match=r"did not finish within 0.5 s"):
            await asyncio.wait_for(call, 5.0)
    # Both threads still held, by calls older than the wait: the next is refused without it,
    # so that requests do not hold the worker's admission slots a second each.
    began = time.monotonic()
    with pytest.raises(BlobStoreError, match="calls to S3 were all still running"):
        await store.get("1/fourth.webp")
    assert time.monotonic() - began < 0.5
    assert (
        REGISTRY.get_sample_value("gatehouse_http_blob_store_failures_total", {"operation": "get"})
        == failures_before + 4
    )


async def test_a_burst_of_calls_waits_for_the_threads_of_a_healthy_server(
    s3_server: S3Server,
) -> None:
    """More cache misses at once than threads (a popular picture expiring from every
    worker's memory) are served in turn, not refused."""
    bucket = s3_server.new_bucket()
    healthy = store_for(s3_server, bucket)
    store = S3BlobStore(healthy._client, bucket, "avatars/", call_deadline=10.0, max_calls=2)
    await store.put("1/x.webp", b"RIFF....WEBP", "image/webp", OWNER)
    blobs = await asyncio.gather(*(store.get("1/x.webp") for _ in range(12)))
    assert blobs == [Blob("image/webp", b"RIFF....WEBP")] * 12


async def test_a_call_that_ended_gives_its_thread_back(s3_server: S3Server) -> None:
    closed = store_for(
        s3_server, "bucket", s3_endpoint_url=f"http://127.0.0.1:{free_port()}", s3_timeout=0.5
    )
    store = S3BlobStore(closed._client, "bucket", "avatars/", call_deadline=10.0, max_calls=1)
    for _ in range(3):
        with pytest.raises(BlobStoreError, match="GATEHOUSE_S3_ENDPOINT_URL and the AWS"):
            await store.get("1/x.webp")


class CountingClient:
    """A boto3 S3 client's put_object, counting the objects it stored."""

    def __init__(self) -> None:
        self.puts: list[str] = []

    def put_object(self, **request: object) -> None:
        self.puts.append(str(request["Key"]))


async def test_a_call_that_got_no_thread_does_not_run_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread that cannot start (a pod's PID limit) leaves the work queued for the next
    thread: a put answered as failed must not land then, a picture no profile names."""
    client = CountingClient()
    store = S3BlobStore(client, "bucket", "avatars/", call_deadline=10.0, max_calls=2)
    fail_the_next_thread_start(store._threads, monkeypatch)
    with pytest.raises(RuntimeError, match=THREAD_START_FAILURE):
        await store.put("1/failed.webp", b"x", "image/webp", OWNER)
    await store.put("1/stored.webp", b"y", "image/webp", OWNER)
    await store.put("1/also.webp", b"z", "image/webp", OWNER)
    assert sorted(client.puts) == ["avatars/1/also.webp", "avatars/1/stored.webp"]
