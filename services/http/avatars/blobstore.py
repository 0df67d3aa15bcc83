"""The blob store interface of the HTTP tier, and the choice of backend (GATEHOUSE_BLOB_STORE).

- `database` (default): blobs live in MySQL, written and read through the auth service's
  PUT_BLOB / GET_BLOB / DELETE_BLOB calls, so HTTP processes share no volume and stay stateless.
- `s3`: blobs are objects in an S3-compatible bucket (GATEHOUSE_S3_*; credentials from the
  standard AWS environment variables or the pod's role).

Keys are content-addressed and never rewritten with other bytes, so a blob read once may be
served from memory for ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.http.auth_client import AuthClient
from services.http.settings import HttpSettings


@dataclass(frozen=True)
class Blob:
    content_type: str
    data: bytes


class BlobStore(Protocol):
    """Failures raise BlobStoreError (s3) or RpcError (database: the auth service's answer);
    services.http.errors turns both into 503s."""

    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> Blob | None:
        """The blob, or None when no blob has this key."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob; an absent key is no error."""
        ...


def open_blob_store(settings: HttpSettings, auth: AuthClient) -> BlobStore:
    if settings.blob_store == "s3":
        # Imported only when used: boto3 takes a while to import and memory in every worker.
        from services.http.avatars.blobstore_s3 import S3BlobStore

        return S3BlobStore.from_settings(settings)
    from services.http.avatars.blobstore_database import DatabaseBlobStore

    return DatabaseBlobStore(auth)
