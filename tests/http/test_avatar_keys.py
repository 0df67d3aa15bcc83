"""Picture keys and URLs: content-addressed uploads, a default for everyone else."""

from __future__ import annotations

import hashlib

from services.contract import auth_pb2 as pb
from services.http.avatars.keys import (
    avatar_url,
    default_picture_owner,
    uploaded_digest,
    uploaded_key,
    uploader_of,
)
from services.http.avatars.pictures import Picture

DIGEST = hashlib.sha256(b"pixels").hexdigest()


def test_an_uploaded_key_names_its_owner_and_content() -> None:
    key = uploaded_key(42, Picture(b"pixels", "image/webp", "webp"))
    assert key == f"42/{DIGEST}.webp"
    assert (uploader_of(key), uploaded_digest(key)) == (42, DIGEST)


def test_the_url_of_an_uploaded_picture() -> None:
    user = pb.User(id=7, avatar_key=f"7/{DIGEST}.webp")
    assert avatar_url(user) == f"/avatars/7/{DIGEST}.webp"


def test_without_a_picture_the_url_is_the_default_never_empty() -> None:
    assert avatar_url(pb.User(id=2**63 + 5)) == f"/avatars/default/{2**63 + 5}.svg"
    # A key this release did not write (an old format) is never sent as a broken image.
    assert avatar_url(pb.User(id=7, avatar_key="avatars/1.png")) == "/avatars/default/7.svg"


def test_keys_that_are_not_pictures_have_no_owner() -> None:
    for key in (
        "",
        "7",
        f"7/{DIGEST}.png",
        f"x/{DIGEST}.webp",
        f"7/{DIGEST[:-1]}.webp",
        f"../7/{DIGEST}.webp",
        "default/7.svg",
    ):
        assert uploader_of(key) is None and uploaded_digest(key) is None, key
    assert default_picture_owner("default/7.svg") == 7
    for key in ("default/x.svg", "default/7.png", "default/7.svg/x", f"7/{DIGEST}.webp"):
        assert default_picture_owner(key) is None, key
