"""A profile picture as an account export describes it: where it is, its hash and its size."""

from __future__ import annotations

from typing import Any

from services.contract import auth_pb2 as pb
from services.http.avatars.blobstore import BlobStore
from services.http.avatars.keys import avatar_url, uploaded_digest


async def picture_export(store: BlobStore, user: pb.User) -> dict[str, Any] | None:
    """`{url, sha256, bytes}` of the user's uploaded picture; None without one (the default
    picture is drawn on request, nothing is stored), or when the store no longer has it."""
    digest = uploaded_digest(user.avatar_key)
    if digest is None:
        return None
    blob = await store.get(user.avatar_key)
    if blob is None:
        return None
    return {"url": avatar_url(user), "sha256": digest, "bytes": len(blob.data)}
