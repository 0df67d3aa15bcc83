"""The blob store interface of the HTTP tier, and the choice of backend (GATEHOUSE_BLOB_STORE).

- `database` (default): blobs live in MySQL, written and read through the auth service's
  PUT_BLOB / GET_BLOB / DELETE_BLOB calls, so HTTP processes share no volume and stay stateless.
- `s3`: blobs are objects in an S3-compatible bucket (GATEHOUSE_S3_*; credentials from the
  standard AWS environment variables or the pod's role).

Keys are content-addressed and never rewritten with other bytes, so a blob read once may be
served from memory for ever. Writes carry the session of the user who owns the blob (the user
id its key starts with): the auth service checks it for the `database` store; the HTTP tier
writes S3 itself, and checked that session before it got here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.http.auth_client import AuthClient
from services.http.settings import HttpSettings
from services.http.tokens import Session


@dataclass(frozen=True)
class Blob:
    content_type: str
    data: bytes


class BlobStore(Protocol):
    """Failures raise BlobStoreError (s3) or RpcError (database: the auth service's answer);
    services.http.errors turns both into 503s."""

    # True when the auth service keeps the blobs (the `database` store): deleting an account
    # there deletes its blobs too (DeleteAccountReply.blobs_deleted).
    held_by_auth_service: bool

    async def put(self, key: str, data: bytes, content_type: str, owner: Session) -> None:
        """Store the blob of `owner`, a live session of the user its key names."""
        ...

    async def get(self, key: str) -> Blob | None:
        """The blob, or None when no blob has this key."""
        ...

    async def delete(self, key: str, owner: Session) -> None:
        """Remove the blob of `owner` (as in `put`); an absent key is no error."""
        ...


def open_blob_store(settings: HttpSettings, auth: AuthClient) -> BlobStore:
    if settings.blob_store == "s3":
        # Imported only when used: boto3 takes a while to import and memory in every worker.
        from services.http.avatars.blobstore_s3 import S3BlobStore

        return S3BlobStore.from_settings(settings)
    from services.http.avatars.blobstore_database import DatabaseBlobStore

    return DatabaseBlobStore(auth)
