"""The `s3` blob store: blobs as objects in an S3-compatible bucket.

boto3 is synchronous; its calls run in threads. A picture is one small request (put on
upload, get on a cache miss, delete on replacement), so threads cost little, and boto3 brings
the whole AWS credential chain (environment variables, shared files, web identity for pods) and
keeps pace with S3-compatible servers.

A slow or frozen S3 must cost the pictures only. The calls run on threads of their own, at most
MAX_CALLS_IN_FLIGHT per worker, each holding its slot until its thread ends; a call waits at
most SLOT_WAIT_SECONDS for a slot, then is refused (503 storage_unavailable). It is refused at
once when every slot is held by a call older than that: S3 is not answering, and waiting
requests would hold the worker's admission slots, a second each, that reads need. A read waits
for its answer CALL_DEADLINE_FACTOR times GATEHOUSE_S3_TIMEOUT at most (botocore's timeouts are
per connect and per read, and a body that trickles in resets the second). Puts and deletes get
no such deadline: a put given up on could still land, leaving a picture that no profile names
and no log line reports. Before, the calls shared the event loop's default pool with the
picture decodes and /metrics, and GETs that waited on a frozen S3 held the worker's admission
slots until every read of the worker was refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.http import metrics
from services.http.avatars.blobstore import Blob
from services.http.errors import BlobStoreError
from services.http.settings import HttpSettings
from services.http.tokens import Session

# The immutable keys make every object cacheable by anything in front of the bucket.
_OBJECT_CACHE_CONTROL = "public, max-age=31536000, immutable"
_ABSENT = frozenset({"NoSuchKey", "404"})
MAX_CALLS_IN_FLIGHT = 8
# A burst of cache misses waits its turn; a frozen S3's calls hold every slot far longer.
SLOT_WAIT_SECONDS = 1.0
# Two attempts of a connect and a read each (the client's retries), and some room.
CALL_DEADLINE_FACTOR = 5

ResultT = TypeVar("ResultT")


class S3BlobStore:
    # The HTTP tier writes the bucket itself, the owner's session checked before (replace.py).
    held_by_auth_service = False

    # `client` is a boto3 S3 client; boto3 builds its class at run time, hence Any.
    def __init__(
        self,
        client: Any,
        bucket: str,
        key_prefix: str,
        call_deadline: float,
        max_calls: int = MAX_CALLS_IN_FLIGHT,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._key_prefix = key_prefix
        self._call_deadline = call_deadline
        self._max_calls = max_calls
        # Held by a call from its start to its thread's end, which a request that stopped
        # waiting for it does not shorten.
        self._call_slots = asyncio.Semaphore(max_calls)
        self._started: dict[int, float] = {}  # loop.time() each running call began, by id
        self._threads = ThreadPoolExecutor(max_calls, thread_name_prefix="s3")

    @classmethod
    def from_settings(cls, settings: HttpSettings) -> S3BlobStore:
        config = Config(
            connect_timeout=settings.s3_timeout,
            read_timeout=settings.s3_timeout,
            retries={"max_attempts": 2, "mode": "standard"},
            # Servers other than AWS (MinIO, Ceph, ...) are reached by URL, bucket in the path.
            s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
        )
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region or None,
            config=config,
        )
        return cls(
            client,
            settings.s3_bucket,
            settings.s3_key_prefix,
            call_deadline=CALL_DEADLINE_FACTOR * settings.s3_timeout,
        )

    async def put(self, key: str, data: bytes, content_type: str, owner: Session) -> None:
        await self._call(
            "put",
            key,
            lambda name: self._client.put_object(
                Bucket=self._bucket,
                Key=name,
                Body=data,
                ContentType=content_type,
                CacheControl=_OBJECT_CACHE_CONTROL,
            ),
        )

    async def get(self, key: str) -> Blob | None:
        def read(name: str) -> Blob | None:
            try:
                answer = self._client.get_object(Bucket=self._bucket, Key=name)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _ABSENT:
                    return None
                raise
            with answer["Body"] as body:
                return Blob(content_type=answer["ContentType"], data=body.read())

        return await self._call("get", key, read, deadline=self._call_deadline)

    async def delete(self, key: str, owner: Session) -> None:
        await self._call(
            "delete", key, lambda name: self._client.delete_object(Bucket=self._bucket, Key=name)
        )

    async def _call(
        self,
        operation: str,
        key: str,
        work: Callable[[str], ResultT],
        deadline: float | None = None,
    ) -> ResultT:
        name = self._key_prefix + key
        where = f"S3 {operation} of s3://{self._bucket}/{name}"
        loop = asyncio.get_running_loop()
        try:
            if self._call_slots.locked() and self._all_stuck(loop.time()):
                raise TimeoutError
            async with asyncio.timeout(SLOT_WAIT_SECONDS):
                await self._call_slots.acquire()
        except TimeoutError:
            metrics.BLOB_STORE_FAILURES.labels(operation).inc()
            raise BlobStoreError(
                f"{where} not sent: this worker's {self._max_calls} calls to S3 were all still "
                f"running after {SLOT_WAIT_SECONDS:g} s; S3 is slow or unreachable "
                "(GATEHOUSE_S3_ENDPOINT_URL, its network)"
            ) from None
        given_up = False

        def unless_given_up(name: str) -> ResultT | None:
            # A thread that could not start leaves the work queued for another: it must not
            # run once its caller was answered (a put landing then is a picture nobody names).
            return None if given_up else work(name)

        try:
            call = loop.run_in_executor(self._threads, unless_given_up, name)
        except BaseException:
            given_up = True
            self._call_slots.release()
            raise
        self._started[id(call)] = loop.time()

        def call_ended(_: object) -> None:
            del self._started[id(call)]
            self._call_slots.release()

        call.add_done_callback(call_ended)
        answer_within = asyncio.timeout(deadline)
        try:
            async with answer_within:
                return cast(ResultT, await asyncio.shield(call))
        except TimeoutError as exc:
            metrics.BLOB_STORE_FAILURES.labels(operation).inc()
            if not answer_within.expired():  # a socket's own timeout, raised by the call
                raise BlobStoreError(f"{where} failed: timed out; S3 is slow") from exc
            raise BlobStoreError(
                f"{where} did not finish within {deadline} s; S3 is slow or unreachable "
                "(GATEHOUSE_S3_ENDPOINT_URL, its network)"
            ) from None
        except (BotoCoreError, ClientError) as exc:
            metrics.BLOB_STORE_FAILURES.labels(operation).inc()
            raise BlobStoreError(
                f"{where} failed: {exc}; check the bucket, GATEHOUSE_S3_ENDPOINT_URL and the AWS "
                "credentials"
            ) from exc

    def _all_stuck(self, now: float) -> bool:
        """Every running call began more than SLOT_WAIT_SECONDS ago."""
        return bool(self._started) and max(self._started.values()) < now - SLOT_WAIT_SECONDS
