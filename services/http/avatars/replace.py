"""Replacing a user's profile picture: decode and re-encode the upload, store it, point the
profile at it, and delete the picture it replaces.

    avatars = Avatars(accounts, blob_store, decode_pool, picture_cache, uploads_per_account=2)
    with avatars.uploading(session):                # 503 past the account's uploads at once
        profile = await avatars.live_profile(session)   # before the upload's body is read
    user = await avatars.replace(session, upload, profile)   # ApiError 415 / 400 for bad ones
    await avatars.delete_picture(key, session)   # from the blob store, then this pod's memory
    await avatars.delete_unused_picture(key, session)  # the same; a failure is logged, not raised
    await avatars.account_deleted(key, session, blobs_deleted)  # after the account's deletion
    avatars.forget_picture(key)         # deleted by someone else (the auth service)

Blob writes carry the session of the user whose picture it is: the `database` store's calls
need it (the auth service checks it), and a session that has ended cannot delete any more.

A deleted picture is 404 at once from every worker of the pod that deleted it, and from the
other pods once their memory of it has expired (picture_cache.py).

The session is checked with the auth service before the upload's body is read: a logged-out
or revoked session's upload costs an RPC, never the memory of its body nor a decode.

Once decoded, storing the picture, pointing the profile at it and deleting the one it replaces
run to their end even if the client leaves. With the `database` store the auth service points
the profile and deletes the replaced blob in one transaction that takes the user's row lock,
and refuses a key whose blob a concurrent change has just deleted (the upload then stores it
again): so concurrent uploads of one user leave no blob behind, and the profile never names a
deleted one. With `s3` the HTTP tier deletes the picture read before the body, which concurrent
uploads of one account can race (README "Deleted pictures").

An upload racing its account's deletion stores no orphan: whichever blob it stored is deleted
again when the profile update is refused because the account was deleted, even when it has the
key of the account's picture, which the deletion may have deleted just before the upload stored
it again (docs/design.md, "Deleting an account"). With the `database` store the auth service
does that itself (the deletion deletes the account's blobs, a put after it deletes its own);
the HTTP tier, whose session ended with the account, only forgets the picture.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractContextManager

from starlette.requests import Request

from services.contract import auth_pb2 as pb
from services.foundation.rpc.protocol import RpcError
from services.http.account_calls import AccountCalls
from services.http.avatars.blobstore import BlobStore
from services.http.avatars.decode_pool import DecodePool, api_error
from services.http.avatars.keys import uploaded_key, uploader_of
from services.http.avatars.picture_cache import PictureCache
from services.http.avatars.pictures import Picture, looks_like_an_accepted_image, not_an_image
from services.http.bodies import Form, read_form
from services.http.errors import ApiError, BlobStoreError
from services.http.middleware.upload_limit import UploadsByClient
from services.http.tokens import Session

log = logging.getLogger(__name__)

UPLOAD_FIELD = "file"
# Room for a multipart body's boundaries, part headers and small fields around the picture.
MULTIPART_OVERHEAD_BYTES = 16 * 1024
# Answers after which the profile surely does not point at the new picture (a lost answer
# or an unavailable database leave it unknown: the picture then stays stored).
_NOT_APPLIED = frozenset({pb.STATUS_UNAUTHENTICATED, pb.STATUS_INVALID})
# The profile update's refusal when the account was deleted meanwhile: nothing points at any
# picture of that account any more.
ACCOUNT_DELETED = "account_deleted"
# Its refusal of a picture whose blob a concurrent change of the same user deleted after this
# upload stored it (auth.proto, picture_stored_here): stored again, and the change retried.
PICTURE_MISSING = "picture_missing"
_PICTURE_MISSING_ATTEMPTS = 3
# The refusals of an upload without a picture in it (no file chosen, an empty one), which the
# pages word as one; the form's other 400s (unreadable, two files) say what they are.
_NO_PICTURE = f"choose a picture: send it in the multipart field `{UPLOAD_FIELD}`"
_EMPTY_PICTURE = "the upload is empty; send a picture"


def is_no_picture(error: ApiError) -> bool:
    """Whether `error` refused an upload for holding no picture, or an empty one."""
    return error.code == "invalid_request" and error.message in (_NO_PICTURE, _EMPTY_PICTURE)


async def read_picture_form(request: Request, max_picture_bytes: int) -> Form:
    """A multipart form holding one picture of at most `max_picture_bytes` and small fields."""
    return await read_form(request, max_picture_bytes + MULTIPART_OVERHEAD_BYTES, max_files=1)


def picture_from_form(form: Form, max_picture_bytes: int) -> bytes:
    upload = form.files.get(UPLOAD_FIELD)
    if not upload:
        raise ApiError(400, "invalid_request", _NO_PICTURE)
    if len(upload) > max_picture_bytes:
        raise ApiError(
            413,
            "payload_too_large",
            f"the picture exceeds {max_picture_bytes} bytes; upload a smaller one",
        )
    return upload


def _outcome_read(storing: asyncio.Future[pb.User]) -> None:
    """Its request may be gone (the client left): the outcome is read here, so that a failure
    is not reported again as never retrieved."""
    if not storing.cancelled():
        storing.exception()


class Avatars:
    def __init__(
        self,
        accounts: AccountCalls,
        store: BlobStore,
        decoders: DecodePool,
        cache: PictureCache,
        uploads_per_account: int,
    ) -> None:
        self._accounts = accounts
        self._store = store
        self._decoders = decoders
        self._cache = cache
        self._uploads = UploadsByClient(uploads_per_account)

    def uploading(self, session: Session) -> AbstractContextManager[None]:
        """Around one upload of the session's account, before its body is read: ApiError
        503 when the account already has GATEHOUSE_MAX_UPLOADS_PER_CLIENT in progress here."""
        return self._uploads.one_more(session.user_id)

    @property
    def store(self) -> BlobStore:
        return self._store

    async def live_profile(self, session: Session) -> pb.User:
        """The session user's profile, asked of the auth service: RpcError 401 when the session
        is revoked or logged out. Ask it before reading an upload's body."""
        return await self._accounts.profile(session)

    async def replace(self, session: Session, upload: bytes, profile: pb.User) -> pb.User:
        """Make `upload` the picture of the session user, whose `live_profile` was `profile`;
        the updated profile."""
        if not upload:
            raise ApiError(400, "invalid_request", _EMPTY_PICTURE)
        if not looks_like_an_accepted_image(upload):
            raise api_error(not_an_image())
        picture = await self._decoders.decode(upload)
        # From here on the picture is stored and the profile changed: a client that leaves now
        # must not cut that short, or a stored blob stays behind, named by no profile.
        storing = asyncio.ensure_future(self._store_and_point_at(session, picture, profile))
        storing.add_done_callback(_outcome_read)
        return await asyncio.shield(storing)

    async def _store_and_point_at(
        self, session: Session, picture: Picture, profile: pb.User
    ) -> pb.User:
        key = uploaded_key(session.user_id, picture)
        stored_here = self._store.held_by_auth_service
        for attempt in range(1, _PICTURE_MISSING_ATTEMPTS + 1):
            await self._store.put(key, picture.data, picture.content_type, session)
            try:
                reply = await self._accounts.change_avatar_key(
                    session, key, stored_here=stored_here
                )
                break
            except RpcError as error:
                if error.reason == PICTURE_MISSING:
                    if attempt < _PICTURE_MISSING_ATTEMPTS:
                        continue  # a concurrent change deleted the same picture after the put
                    raise ApiError(
                        503,
                        "storage_unavailable",
                        "other uploads to this account kept replacing the picture; retry",
                    ) from None
                if error.reason == ACCOUNT_DELETED:
                    await self.account_deleted(key, session, blobs_deleted=True)
                elif stored_here and error.status == pb.STATUS_UNAUTHENTICATED:
                    # The auth service deleted it in the refusal; the ended session could not.
                    self.forget_picture(key)
                elif error.status in _NOT_APPLIED and key != profile.avatar_key:
                    await self.delete_unused_picture(key, session)
                raise
        if reply.HasField("replaced_avatar_key"):
            # The auth service deleted it with the change: only this pod's memory is left.
            if reply.replaced_avatar_key != key:
                self.forget_picture(reply.replaced_avatar_key)
        else:
            previous = profile.avatar_key  # read before the body: a concurrent change may race
            if previous != key and uploader_of(previous) == session.user_id:
                await self.delete_unused_picture(previous, session)
        return reply.user

    async def account_deleted(self, key: str, session: Session, blobs_deleted: bool) -> None:
        """Drop the picture `key` of `session`'s account, which has just been deleted. When
        the auth service deleted the account's blobs (`blobs_deleted`) and holds this store's,
        there is nothing left to delete (and the ended session could not): only forgotten."""
        if blobs_deleted and self._store.held_by_auth_service:
            self.forget_picture(key)
        else:
            await self.delete_unused_picture(key, session)

    async def delete_picture(self, key: str, session: Session) -> None:
        """Delete the picture `key` of `session`'s user from the blob store; once done, no
        worker of this pod serves it any more. Raises RpcError or BlobStoreError when the store
        fails."""
        await self._store.delete(key, session)
        self.forget_picture(key)

    def forget_picture(self, key: str) -> None:
        """Stop serving `key` from memory in every worker of this pod: call it once the picture
        is deleted from the blob store by another path (the auth service deleting an account).
        A key that names no uploaded picture (none, a default picture) is ignored: only uploaded
        pictures are kept in memory."""
        if uploader_of(key) is not None:
            self._cache.forget(key)

    async def delete_unused_picture(self, key: str, session: Session) -> None:
        """Delete a blob that no profile points at; a failure only leaves it behind."""
        try:
            await self.delete_picture(key, session)
        except (RpcError, BlobStoreError) as exc:
            # One line per picture, never held back: it is the only record of a picture left
            # publicly served (a deleted account's, a replaced one) that someone must delete.
            # Uploads and account deletions are authenticated and limited, so are these lines.
            log.warning("could not delete the unused picture %s (%s); it stays stored", key, exc)
