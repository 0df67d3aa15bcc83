"""The operator calls (protocol 4) on a real store (MariaDB primary and replica, Redis), hasher
and throttle: locking and unlocking an account and what a lock does to logins, deleting an
account by name, and listing and ending its sessions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from services.auth.accounts import AccountLocked, AccountStore
from services.auth.admin_handlers import AdminHandlers
from services.auth.handlers import AccountHandlers
from services.auth.store.database import Database
from services.auth.store.freshness import ReplicaFreshness
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.rpc.protocol import RpcError
from tests.auth.conftest import Eventually
from tests.auth.test_account_lifecycle import (
    PASSWORD,
    assert_a_late_login_gets_no_session,
    call,
    is_live,
    log_in,
    new_account,
    refusal,
    username_of,
)
from tests.auth.test_accounts import wait_until_replica_covers


@pytest.fixture
def admin(store: AccountStore) -> AdminHandlers:
    return AdminHandlers(store, reuse_deleted_usernames=False)


def named(username: str) -> pb.AdminUserRequest:
    return pb.AdminUserRequest(username=username)


async def login_refusal(handlers: AccountHandlers, username: str, password: str) -> RpcError:
    return await refusal(
        handlers,
        methods.AUTHENTICATE,
        pb.AuthenticateRequest(username=username, password=password, client_ip="192.0.2.40"),
    )


async def test_show_answers_what_the_operator_needs_to_know(
    handlers: AccountHandlers, admin: AdminHandlers
) -> None:
    first, _ = await new_account(handlers, sessions=2)
    username = await username_of(handlers, first)

    account = (await call(admin, methods.ADMIN_SHOW_USER, named(username.upper()))).account

    assert (account.user.id, account.user.username) == (first.user_id, username)
    assert (account.locked_at_ms, account.live_sessions, account.pepper_version) == (0, 2, 2)


async def test_a_lock_ends_every_session_and_refuses_the_right_password_as_account_locked(
    handlers: AccountHandlers, admin: AdminHandlers
) -> None:
    this, other = await new_account(handlers, sessions=2)
    username = await username_of(handlers, this)

    locked = await call(admin, methods.ADMIN_LOCK_USER, named(username))

    assert locked.sessions_ended == 2 and locked.account.locked_at_ms > 0
    assert locked.account.live_sessions == 0
    assert not await is_live(handlers, this) and not await is_live(handlers, other)
    right = await login_refusal(handlers, username, PASSWORD)
    assert (right.status, right.reason) == (pb.STATUS_UNAUTHENTICATED, "account_locked")
    wrong = await login_refusal(handlers, username, "not the password")
    assert (wrong.status, wrong.reason) == (pb.STATUS_UNAUTHENTICATED, "invalid_credentials")
    again = await call(admin, methods.ADMIN_LOCK_USER, named(username))
    assert again.sessions_ended == 0
    assert again.account.locked_at_ms == locked.account.locked_at_ms  # locking twice: no change

    unlocked = await call(admin, methods.ADMIN_UNLOCK_USER, named(username))

    assert unlocked.account.locked_at_ms == 0
    assert await is_live(handlers, await log_in(handlers, username, PASSWORD, "192.0.2.41"))


async def test_the_login_throttle_judges_a_locked_account_first(
    handlers: AccountHandlers, admin: AdminHandlers
) -> None:
    (session,) = await new_account(handlers)
    username = await username_of(handlers, session)
    await call(admin, methods.ADMIN_LOCK_USER, named(username))
    for _ in range(2):  # the tests' throttle allows two failures per (name, IP)
        await login_refusal(handlers, username, "not the password")

    refused = await login_refusal(handlers, username, PASSWORD)

    assert (refused.status, refused.reason) == (pb.STATUS_OVERLOADED, "too_many_attempts")


async def test_a_login_whose_password_was_checked_before_the_lock_gets_no_session(
    handlers: AccountHandlers, admin: AdminHandlers, store: AccountStore, primary: Database
) -> None:
    (session,) = await new_account(handlers)
    await call(admin, methods.ADMIN_LOCK_USER, named(await username_of(handlers, session)))
    await assert_a_late_login_gets_no_session(store, primary, session.user_id, AccountLocked)


async def test_a_session_that_outlived_the_lock_cannot_check_the_password(
    handlers: AccountHandlers, admin: AdminHandlers, primary: Database
) -> None:
    """As a session opened by an auth replica of an older release during a rolling upgrade,
    which knows nothing of locks: the calls that check the password refuse it all the same."""
    (session,) = await new_account(handlers)
    await call(admin, methods.ADMIN_LOCK_USER, named(await username_of(handlers, session)))
    await primary.execute(
        "operation",
        "INSERT INTO sessions (id, user_id, created_at, expires_at)"
        " VALUES (%s, %s, NOW(6), NOW(6) + INTERVAL 1 HOUR)",
        ("outlived-the-lock", session.user_id),
    )
    survivor = pb.SessionRef(user_id=session.user_id, session_id="outlived-the-lock")

    refused = await refusal(
        handlers,
        methods.CHANGE_PASSWORD,
        pb.ChangePasswordRequest(
            session=survivor, current_password=PASSWORD, new_password="a new password"
        ),
    )

    assert (refused.status, refused.reason) == (pb.STATUS_UNAUTHENTICATED, "account_locked")


async def test_a_stale_replica_cannot_hide_the_lock_from_a_login(
    handlers: AccountHandlers,
    admin: AdminHandlers,
    store: AccountStore,
    primary: Database,
    replica: Database,
    freshness: ReplicaFreshness,
    eventually: Eventually,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    (session,) = await new_account(handlers)
    username = await username_of(handlers, session)
    await wait_until_replica_covers(primary, replica, freshness, eventually)
    await stop_sql_thread()

    await call(admin, methods.ADMIN_LOCK_USER, named(username))

    credentials = await store.find_credentials(username)
    assert credentials is not None and credentials.locked
    refused = await login_refusal(handlers, username, PASSWORD)
    assert refused.reason == "account_locked"


async def test_delete_erases_the_account_without_its_password_and_names_its_picture(
    handlers: AccountHandlers, admin: AdminHandlers
) -> None:
    this, other = await new_account(handlers, sessions=2)
    username = await username_of(handlers, this)
    picture = f"{this.user_id}/{'b' * 64}.webp"
    await call(
        handlers,
        methods.UPDATE_PROFILE,
        pb.UpdateProfileRequest(session=this, avatar_key=picture),
    )

    reply = await call(admin, methods.ADMIN_DELETE_USER, named(username))

    assert reply.avatar_key == picture
    assert not await is_live(handlers, this) and not await is_live(handlers, other)
    gone = await refusal(admin, methods.ADMIN_SHOW_USER, named(username))
    assert (gone.status, gone.reason) == (pb.STATUS_NOT_FOUND, "user_not_found")
    refused = await login_refusal(handlers, username, PASSWORD)
    assert refused.reason == "invalid_credentials"


async def test_sessions_are_listed_and_ended_by_id_or_all_at_once(
    handlers: AccountHandlers, admin: AdminHandlers
) -> None:
    first, second, third = await new_account(handlers, sessions=3)
    username = await username_of(handlers, first)

    listed = await call(admin, methods.ADMIN_LIST_SESSIONS, named(username))

    assert {session.id for session in listed.sessions} == {
        first.session_id,
        second.session_id,
        third.session_id,
    }
    assert not any(session.current for session in listed.sessions)
    ended = await call(
        admin,
        methods.ADMIN_END_SESSIONS,
        pb.AdminEndSessionsRequest(
            username=username, ids=[first.session_id, "no-such-session", first.session_id]
        ),
    )
    assert (ended.ended, list(ended.not_found)) == (1, ["no-such-session"])
    assert not await is_live(handlers, first)
    assert await is_live(handlers, second) and await is_live(handlers, third)

    everything = await call(
        admin, methods.ADMIN_END_SESSIONS, pb.AdminEndSessionsRequest(username=username, all=True)
    )

    assert everything.ended == 2
    assert not await is_live(handlers, second) and not await is_live(handlers, third)


@pytest.mark.parametrize(
    "request_",
    [
        pb.AdminEndSessionsRequest(username="someone", all=True, ids=["a"]),
        pb.AdminEndSessionsRequest(username="someone"),
    ],
    ids=["both", "neither"],
)
async def test_ending_sessions_needs_ids_or_all_but_not_both(
    admin: AdminHandlers, request_: pb.AdminEndSessionsRequest
) -> None:
    refused = await refusal(admin, methods.ADMIN_END_SESSIONS, request_)
    assert (refused.status, refused.reason) == (pb.STATUS_INVALID, "invalid_request")


@pytest.mark.parametrize("username", ["nobody_has_this_name", "x" * 31, "ünïcode", ""])
async def test_every_call_answers_user_not_found_for_a_name_without_a_live_account(
    admin: AdminHandlers, username: str
) -> None:
    for method in (
        methods.ADMIN_SHOW_USER,
        methods.ADMIN_LOCK_USER,
        methods.ADMIN_UNLOCK_USER,
        methods.ADMIN_DELETE_USER,
        methods.ADMIN_LIST_SESSIONS,
    ):
        refused = await refusal(admin, method, named(username))
        assert (refused.status, refused.reason) == (pb.STATUS_NOT_FOUND, "user_not_found")
    refused = await refusal(
        admin, methods.ADMIN_END_SESSIONS, pb.AdminEndSessionsRequest(username=username, all=True)
    )
    assert refused.reason == "user_not_found"
