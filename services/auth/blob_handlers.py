"""PUT_BLOB, GET_BLOB and DELETE_BLOB: the `database` blob store of the HTTP tier.

A blob belongs to the user whose id starts its key (`<user id>/<sha256>.webp`, the HTTP tier's
uploaded pictures). Putting or deleting one takes a live session of that user, checked as
GetProfile checks it (revoked, expired or deleted: UNAUTHENTICATED); a key of another user is
PERMISSION_DENIED. The operator identity (mutual TLS) may delete without a session. Reading
stays open to the HTTP identity: pictures are public.

Only WebP pictures are stored (store/blobs.py). A put racing the deletion of its account leaves
nothing: the deletion deletes the account's blobs in its transaction, and a put that committed
after that statement finds the account deleted when it checks again and deletes its blob.
"""

from __future__ import annotations

from typing import Any

from services.auth.accounts import AccountStore
from services.auth.handlers import _route
from services.auth.password_checks import account_deleted, session_ended
from services.auth.roles import OPERATOR, Roles
from services.auth.store.blobs import (
    BlobTable,
    InvalidBlob,
    NotWebp,
    blob_owner,
    check_blob_key,
)
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.rpc.calls import caller_identity
from services.foundation.rpc.protocol import RpcError
from services.foundation.rpc.routes import Route


def _invalid_blob(exc: InvalidBlob) -> RpcError:
    reason = "not_webp" if isinstance(exc, NotWebp) else "invalid_blob"
    return RpcError(pb.STATUS_INVALID, str(exc), reason)


def _session_required() -> RpcError:
    return RpcError(
        pb.STATUS_UNAUTHENTICATED,
        "putting or deleting a blob needs a session of the user who owns it",
        "session_required",
    )


def _not_owner() -> RpcError:
    return RpcError(
        pb.STATUS_PERMISSION_DENIED,
        "the blob's key belongs to another user than the session's",
        "not_blob_owner",
    )


class BlobHandlers:
    def __init__(self, blobs: BlobTable, store: AccountStore, roles: Roles | None = None) -> None:
        self._blobs = blobs
        self._store = store
        self._roles = roles or Roles()

    def routes(self) -> list[Route[Any, Any]]:
        return [
            _route(methods.PUT_BLOB, self.put_blob),
            _route(methods.GET_BLOB, self.get_blob),
            _route(methods.DELETE_BLOB, self.delete_blob),
        ]

    async def put_blob(self, request: pb.PutBlobRequest, deadline: float) -> pb.PutBlobReply:
        owner = await self._owner_with_session(request.key, request)
        try:
            await self._blobs.put(request.key, request.content_type, request.data)
        except InvalidBlob as exc:
            raise _invalid_blob(exc) from None
        if not await self._store.account_is_live(owner):
            await self._blobs.delete(request.key)  # the deletion may have run before the put
            raise account_deleted()
        return pb.PutBlobReply()

    async def get_blob(self, request: pb.GetBlobRequest, deadline: float) -> pb.GetBlobReply:
        try:
            blob = await self._blobs.get(request.key)
        except InvalidBlob as exc:
            raise _invalid_blob(exc) from None
        if blob is None:
            raise RpcError(
                pb.STATUS_NOT_FOUND, f"no blob has the key {request.key!r}", "blob_not_found"
            )
        return pb.GetBlobReply(content_type=blob.content_type, data=blob.data)

    async def delete_blob(
        self, request: pb.DeleteBlobRequest, deadline: float
    ) -> pb.DeleteBlobReply:
        if request.HasField("session") or self._roles.role_of(caller_identity()) != OPERATOR:
            await self._owner_with_session(request.key, request)
        owner = blob_owner(request.key)
        try:
            if owner is None:
                await self._blobs.delete(request.key)
            else:  # kept while its owner's profile names it
                check_blob_key(request.key)
                await self._store.delete_unused_blob(owner, request.key, not_after=deadline)
        except InvalidBlob as exc:
            raise _invalid_blob(exc) from None
        return pb.DeleteBlobReply()

    async def _owner_with_session(
        self, key: str, request: pb.PutBlobRequest | pb.DeleteBlobRequest
    ) -> int:
        """The owner of `key`, once the request's session is found live and theirs."""
        if not request.HasField("session"):
            raise _session_required()
        session = request.session
        if await self._store.session_profile(session.user_id, session.session_id) is None:
            raise session_ended()
        owner = blob_owner(key)
        if owner is None or owner != session.user_id:
            raise _not_owner()
        return owner
