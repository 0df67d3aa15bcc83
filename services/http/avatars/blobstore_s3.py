"""The `s3` blob store: blobs as objects in an S3-compatible bucket.

boto3 is synchronous; its calls run in the default thread pool. A picture is one small
request (put on upload, get on a cache miss, delete on replacement), so threads cost little,
and boto3 brings the whole AWS credential chain (environment variables, shared files, web
identity for pods) and keeps pace with S3-compatible servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

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

ResultT = TypeVar("ResultT")


class S3BlobStore:
    # The HTTP tier writes the bucket itself, the owner's session checked before (replace.py).
    held_by_auth_service = False

    # `client` is a boto3 S3 client; boto3 builds its class at run time, hence Any.
    def __init__(self, client: Any, bucket: str, key_prefix: str) -> None:
        self._client = client
        self._bucket = bucket
        self._key_prefix = key_prefix

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
        return cls(client, settings.s3_bucket, settings.s3_key_prefix)

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

        return await self._call("get", key, read)

    async def delete(self, key: str, owner: Session) -> None:
        await self._call(
            "delete", key, lambda name: self._client.delete_object(Bucket=self._bucket, Key=name)
        )

    async def _call(self, operation: str, key: str, work: Callable[[str], ResultT]) -> ResultT:
        name = self._key_prefix + key
        try:
            return await asyncio.to_thread(work, name)
        except (BotoCoreError, ClientError) as exc:
            metrics.BLOB_STORE_FAILURES.labels(operation).inc()
            raise BlobStoreError(
                f"S3 {operation} of s3://{self._bucket}/{name} failed: {exc}; check the bucket, "
                "GATEHOUSE_S3_ENDPOINT_URL and the AWS credentials"
            ) from exc
