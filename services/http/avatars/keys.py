"""Blob keys and URLs of profile pictures.

An uploaded picture is `<user id>/<sha256 of the stored bytes>.webp`: the owner is in the key,
so replacing a picture deletes only that user's old blob, and the content hash makes the key
name the same bytes for ever (served as immutable). A user without a picture gets
`default/<user id>.svg`, an identicon drawn on request, so `avatar_url` is never empty.
"""

from __future__ import annotations

import re

from services.contract import auth_pb2 as pb
from services.http.avatars.pictures import Picture

AVATARS_PATH = "/avatars/"
_UPLOADED = re.compile(r"(?P<user_id>[0-9]{1,20})/(?P<digest>[0-9a-f]{64})\.webp")
_DEFAULT = re.compile(r"default/(?P<user_id>[0-9]{1,20})\.svg")


def uploaded_key(user_id: int, picture: Picture) -> str:
    return f"{user_id}/{picture.digest}.{picture.extension}"


def uploaded_digest(key: str) -> str | None:
    """The content hash of an uploaded picture's key; None for anything else."""
    match = _UPLOADED.fullmatch(key)
    return match.group("digest") if match else None


def uploader_of(key: str) -> int | None:
    """The user id in an uploaded picture's key; None for anything else."""
    match = _UPLOADED.fullmatch(key)
    return int(match.group("user_id")) if match else None


def default_picture_owner(key: str) -> int | None:
    """The user id of a default picture's key; None for anything else."""
    match = _DEFAULT.fullmatch(key)
    return int(match.group("user_id")) if match else None


def avatar_url(user: pb.User) -> str:
    """Where the user's picture is served: the uploaded one, else their default picture."""
    if _UPLOADED.fullmatch(user.avatar_key):
        return AVATARS_PATH + user.avatar_key
    return f"{AVATARS_PATH}default/{user.id}.svg"
