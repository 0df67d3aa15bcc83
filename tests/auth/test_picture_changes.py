"""UpdateProfile with picture_stored_here: the `database` blob store's picture changes, where
the auth service points the profile at the new blob and deletes the replaced one in one
transaction, so that concurrent uploads of one user leave no blob behind."""

from __future__ import annotations

import pytest

from services.auth.handlers import PICTURE_MISSING, AccountHandlers
from services.auth.store.database import Database
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from tests.auth.test_account_lifecycle import call, new_account, refusal


def picture_key(user_id: int, fill: str) -> str:
    return f"{user_id}/{fill * 64}.webp"


async def put(primary: Database, key: str) -> None:
    await primary.execute(
        "test",
        "INSERT INTO blobs (blob_key, content_type, data, created_at)"
        " VALUES (%s, 'image/webp', 'x', NOW(6)) ON DUPLICATE KEY UPDATE blob_key = blob_key",
        (key,),
    )


async def stored(primary: Database, user_id: int) -> set[str]:
    rows = await primary.fetch_all(
        "test", "SELECT blob_key FROM blobs WHERE blob_key LIKE %s", (f"{user_id}/%",)
    )
    return {row["blob_key"] for row in rows}


def point_at(session: pb.SessionRef, key: str) -> pb.UpdateProfileRequest:
    return pb.UpdateProfileRequest(session=session, avatar_key=key, picture_stored_here=True)


async def test_a_change_deletes_the_picture_it_replaces_and_says_which(
    handlers: AccountHandlers, primary: Database
) -> None:
    (session,) = await new_account(handlers)
    first, second = picture_key(session.user_id, "a"), picture_key(session.user_id, "b")
    await put(primary, first)
    reply = await call(handlers, methods.UPDATE_PROFILE, point_at(session, first))
    assert (reply.user.avatar_key, reply.replaced_avatar_key) == (first, "")
    await put(primary, second)
    reply = await call(handlers, methods.UPDATE_PROFILE, point_at(session, second))
    assert (reply.user.avatar_key, reply.replaced_avatar_key) == (second, first)
    assert await stored(primary, session.user_id) == {second}


async def test_a_picture_whose_blob_is_gone_is_refused_and_nothing_changes(
    handlers: AccountHandlers, primary: Database
) -> None:
    (session,) = await new_account(handlers)
    current = picture_key(session.user_id, "c")
    await put(primary, current)
    await call(handlers, methods.UPDATE_PROFILE, point_at(session, current))
    refused = await refusal(
        handlers, methods.UPDATE_PROFILE, point_at(session, picture_key(session.user_id, "d"))
    )
    assert (refused.status, refused.reason) == (pb.STATUS_INVALID, PICTURE_MISSING)
    profile = await call(handlers, methods.GET_PROFILE, pb.GetProfileRequest(session=session))
    assert profile.user.avatar_key == current
    assert await stored(primary, session.user_id) == {current}


async def test_re_uploading_the_current_picture_during_another_upload_never_names_a_deleted_blob(
    handlers: AccountHandlers, primary: Database
) -> None:
    """Keys are content hashes: upload 2 stores the picture the profile already has (its put
    changes nothing), upload 1 then replaces it and deletes its blob, and upload 2 points the
    profile back at it. Deleting in the HTTP tier left the profile naming a deleted blob (404)
    and each race a blob behind; here upload 2 is told, stores it again and retries."""
    (session,) = await new_account(handlers)
    kept, new = picture_key(session.user_id, "e"), picture_key(session.user_id, "f")
    await put(primary, kept)
    await call(handlers, methods.UPDATE_PROFILE, point_at(session, kept))
    await put(primary, new)  # upload 1
    await put(primary, kept)  # upload 2: the same picture again
    first = await call(handlers, methods.UPDATE_PROFILE, point_at(session, new))
    assert first.replaced_avatar_key == kept
    refused = await refusal(handlers, methods.UPDATE_PROFILE, point_at(session, kept))
    assert refused.reason == PICTURE_MISSING
    await put(primary, kept)  # upload 2 stores it again
    second = await call(handlers, methods.UPDATE_PROFILE, point_at(session, kept))
    assert (second.user.avatar_key, second.replaced_avatar_key) == (kept, new)
    assert await stored(primary, session.user_id) == {kept}


async def test_another_users_picture_is_never_deleted_and_a_nickname_needs_its_own_call(
    handlers: AccountHandlers, primary: Database
) -> None:
    owner, other = (await new_account(handlers))[0], (await new_account(handlers))[0]
    theirs = picture_key(other.user_id, "9")
    await put(primary, theirs)
    # A profile naming another user's key cannot come from an upload; it must survive anyway.
    await primary.execute(
        "test", "UPDATE users SET avatar_key = %s WHERE id = %s", (theirs, owner.user_id)
    )
    mine = picture_key(owner.user_id, "1")
    await put(primary, mine)
    reply = await call(handlers, methods.UPDATE_PROFILE, point_at(owner, mine))
    assert reply.replaced_avatar_key == theirs
    assert await stored(primary, other.user_id) == {theirs}
    mixed = point_at(owner, mine)
    mixed.nickname = "Ann"
    with pytest.raises(Exception, match="picture_stored_here"):
        await call(handlers, methods.UPDATE_PROFILE, mixed)


async def test_a_change_refused_for_an_ended_session_deletes_the_new_picture(
    handlers: AccountHandlers, primary: Database
) -> None:
    """The session ended between the upload's put and its change: nothing names the picture,
    and the HTTP tier can no longer delete it with that session."""
    this, other = await new_account(handlers, sessions=2)
    current, late = picture_key(this.user_id, "2"), picture_key(this.user_id, "3")
    await put(primary, current)
    await call(handlers, methods.UPDATE_PROFILE, point_at(other, current))
    await put(primary, late)
    await call(handlers, methods.LOGOUT, pb.LogoutRequest(session=this))
    refused = await refusal(handlers, methods.UPDATE_PROFILE, point_at(this, late))
    assert refused.status == pb.STATUS_UNAUTHENTICATED
    assert await stored(primary, this.user_id) == {current}


@pytest.mark.parametrize("stored_here", [False, True])
async def test_an_avatar_key_that_is_not_a_picture_key_of_the_user_is_refused(
    handlers: AccountHandlers, stored_here: bool
) -> None:
    (session,) = await new_account(handlers)
    others = picture_key(session.user_id + 1, "e")
    mine = picture_key(session.user_id, "f")
    for key in [
        others,
        "\x00\x1b[31mred\n",
        f"{session.user_id}/" + "x" * 300,
        "../../etc/x",
        f"{session.user_id}/../{others}",
        f"{mine}?versionId=1",
        mine.replace(".webp", ".svg"),
    ]:
        request = pb.UpdateProfileRequest(
            session=session, avatar_key=key, picture_stored_here=stored_here
        )
        refused = await refusal(handlers, methods.UPDATE_PROFILE, request)
        assert (refused.status, refused.reason) == (pb.STATUS_INVALID, "invalid_avatar_key"), key
    profile = await call(handlers, methods.GET_PROFILE, pb.GetProfileRequest(session=session))
    assert profile.user.avatar_key == ""
    cleared = pb.UpdateProfileRequest(session=session, avatar_key="")  # removing stays allowed
    assert (await call(handlers, methods.UPDATE_PROFILE, cleared)).user.avatar_key == ""
