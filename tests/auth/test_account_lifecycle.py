"""CHANGE_PASSWORD and DELETE_ACCOUNT on a real store (MariaDB primary and replica, Redis),
hasher, throttle and etcd worker-id claim; and the races of a deletion with the writes that
could bring the account back."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import jwt
import pytest
from redis.asyncio import Redis

from services.auth import metrics
from services.auth.accounts import (
    AccountDeleted,
    AccountStore,
    Credentials,
    PasswordChanged,
    freed_username,
)
from services.auth.handlers import AccountHandlers
from services.auth.store.cache import CacheEntry, profile_key
from services.auth.store.database import Database
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.contract.method import Method, ReplyT, RequestT
from services.foundation.rpc.protocol import RpcError
from services.foundation.rpc.routes import Route, by_number
from tests.auth.conftest import HandlersFactory

PASSWORD = "password1"
NEW_PASSWORD = "a new password"


class Routed(Protocol):
    """A set of handlers (AccountHandlers, AdminHandlers, ...)."""

    def routes(self) -> list[Route[Any, Any]]: ...


async def call(handlers: Routed, method: Method[RequestT, ReplyT], request: RequestT) -> ReplyT:
    """The call as the server makes it: through the method's route, payloads both ways."""
    route = by_number(handlers.routes())[method.number]
    deadline = asyncio.get_running_loop().time() + 10.0
    payload = await route.serve(request.SerializeToString(), deadline)
    return method.reply_type.FromString(payload)


async def refusal(
    handlers: Routed, method: Method[RequestT, ReplyT], request: RequestT
) -> RpcError:
    with pytest.raises(RpcError) as refused:
        await call(handlers, method, request)
    return refused.value


async def log_in(
    handlers: AccountHandlers, username: str, password: str = PASSWORD, client_ip: str = ""
) -> pb.SessionRef:
    login = await call(
        handlers,
        methods.AUTHENTICATE,
        pb.AuthenticateRequest(username=username, password=password, client_ip=client_ip),
    )
    claims = jwt.decode(login.token, options={"verify_signature": False})
    return pb.SessionRef(user_id=int(claims["sub"]), session_id=claims["sid"])


async def new_account(handlers: AccountHandlers, sessions: int = 1) -> list[pb.SessionRef]:
    username = f"l{uuid.uuid4().hex[:12]}"
    await call(handlers, methods.REGISTER, pb.RegisterRequest(username=username, password=PASSWORD))
    return [await log_in(handlers, username) for _ in range(sessions)]


async def username_of(handlers: AccountHandlers, session: pb.SessionRef) -> str:
    reply = await call(handlers, methods.GET_PROFILE, pb.GetProfileRequest(session=session))
    return reply.user.username


async def is_live(handlers: AccountHandlers, session: pb.SessionRef) -> bool:
    try:
        await call(handlers, methods.GET_PROFILE, pb.GetProfileRequest(session=session))
    except RpcError as error:
        assert error.reason == "unauthenticated", error
        return False
    return True


def change(
    session: pb.SessionRef, current: str = PASSWORD, new: str = NEW_PASSWORD
) -> pb.ChangePasswordRequest:
    return pb.ChangePasswordRequest(
        session=session, current_password=current, new_password=new, client_ip="192.0.2.7"
    )


def deletion(session: pb.SessionRef, password: str = PASSWORD) -> pb.DeleteAccountRequest:
    return pb.DeleteAccountRequest(session=session, password=password, client_ip="192.0.2.7")


def counted(counter_value: Callable[[], float]) -> Callable[[], float]:
    """How much a counter moved since this was called."""
    start = counter_value()
    return lambda: counter_value() - start


async def assert_a_late_login_gets_no_session(
    store: AccountStore,
    primary: Database,
    user_id: int,
    refusal: type[Exception],
    *,
    password_changes: int = 0,
) -> None:
    """Where a login whose password check passed just before the account changed stores its
    session (having read `password_changes` with the hash it checked): refused with
    `refusal`, and nothing stored."""
    with pytest.raises(refusal):
        await store.create_session(
            user_id,
            "late-login-session",
            datetime.now(UTC) + timedelta(hours=1),
            password_changes=password_changes,
        )
    stored = await primary.fetch_one(
        "operation", "SELECT id FROM sessions WHERE id = %s", ("late-login-session",)
    )
    assert stored is None


# The password change


async def test_a_password_change_ends_every_other_session_and_keeps_this_one(
    handlers: AccountHandlers, primary: Database
) -> None:
    this, other, third = await new_account(handlers, sessions=3)
    username = await username_of(handlers, this)

    reply = await call(handlers, methods.CHANGE_PASSWORD, change(this))

    assert reply.sessions_ended == 2
    assert await is_live(handlers, this)
    assert not await is_live(handlers, other) and not await is_live(handlers, third)
    old = await refusal(
        handlers, methods.AUTHENTICATE, pb.AuthenticateRequest(username=username, password=PASSWORD)
    )
    assert old.reason == "invalid_credentials"
    assert await log_in(handlers, username, NEW_PASSWORD)
    row = await primary.fetch_one(
        "operation", "SELECT pepper_version FROM users WHERE id = %s", (this.user_id,)
    )
    assert row == {"pepper_version": 2}  # the current pepper


async def test_a_wrong_current_password_is_refused_and_counts_as_a_failed_login(
    handlers: AccountHandlers,
) -> None:
    (session,) = await new_account(handlers)
    username = await username_of(handlers, session)
    hashes = counted(metrics.HASHES.labels("computed")._value.get)

    first = await refusal(handlers, methods.CHANGE_PASSWORD, change(session, current="wrong one"))
    assert first.status == pb.STATUS_UNAUTHENTICATED and first.reason == "invalid_credentials"
    # The second failure of this (account, IP) pair, counted as if it were a login...
    await refusal(
        handlers,
        methods.AUTHENTICATE,
        pb.AuthenticateRequest(username=username, password="wrong two", client_ip="192.0.2.7"),
    )
    assert hashes() == 2
    # ...so the right password is now refused by the throttle, before any hash.
    throttled = await refusal(handlers, methods.CHANGE_PASSWORD, change(session))
    assert throttled.status == pb.STATUS_OVERLOADED and throttled.reason == "too_many_attempts"
    assert throttled.retry_after_seconds > 0
    assert hashes() == 2
    deleting = await refusal(handlers, methods.DELETE_ACCOUNT, deletion(session))
    assert deleting.reason == "too_many_attempts"
    assert await is_live(handlers, session)


async def test_a_password_longer_than_any_stored_one_is_refused_before_the_hash(
    handlers: AccountHandlers,
) -> None:
    """Normalizing 64 KiB of combining marks holds the GIL for seconds (NFKC reorders them):
    a login or a current password past the most code points a signup takes is refused at
    once."""
    (session,) = await new_account(handlers)
    username = await username_of(handlers, session)
    crafted = "a" + "\u0301\u0316" * 520
    hashed = counted(metrics.HASHES.labels("computed")._value.get)
    too_long = counted(metrics.LOGINS.labels("too_long")._value.get)
    login = await refusal(
        handlers, methods.AUTHENTICATE, pb.AuthenticateRequest(username=username, password=crafted)
    )
    changed = await refusal(handlers, methods.CHANGE_PASSWORD, change(session, current=crafted))
    assert login.reason == changed.reason == "invalid_credentials"
    assert (hashed(), too_long()) == (0, 2)
    assert await is_live(handlers, session)


async def test_the_longest_password_logs_in_decomposed(handlers: AccountHandlers) -> None:
    """256 characters is the limit once normalized: sent decomposed (macOS), the same password
    is 512 code points, and is the same password."""
    (session,) = await new_account(handlers)
    composed = "\u00e9" * 256
    await call(handlers, methods.CHANGE_PASSWORD, change(session, new=composed))
    decomposed = "e\u0301" * 256
    assert await log_in(handlers, await username_of(handlers, session), decomposed)


async def test_a_new_password_must_follow_the_signup_rules(handlers: AccountHandlers) -> None:
    (session,) = await new_account(handlers)
    for new in ("short", "x" * 257):
        refused = await refusal(handlers, methods.CHANGE_PASSWORD, change(session, new=new))
        assert refused.status == pb.STATUS_INVALID and refused.reason == "invalid_password"
    assert await log_in(handlers, await username_of(handlers, session), PASSWORD)


async def test_an_ended_session_cannot_change_the_password(handlers: AccountHandlers) -> None:
    this, other = await new_account(handlers, sessions=2)
    await call(handlers, methods.LOGOUT, pb.LogoutRequest(session=other))
    refused = await refusal(handlers, methods.CHANGE_PASSWORD, change(other))
    assert refused.status == pb.STATUS_UNAUTHENTICATED and refused.reason == "unauthenticated"
    assert await is_live(handlers, this)


async def test_a_rehash_after_a_login_never_undoes_a_password_change(
    handlers: AccountHandlers, store: AccountStore, primary: Database
) -> None:
    (session,) = await new_account(handlers)
    before = await primary.fetch_one(
        "operation", "SELECT password_hash FROM users WHERE id = %s", (session.user_id,)
    )
    assert before is not None
    await call(handlers, methods.CHANGE_PASSWORD, change(session))
    # A login under the old password verified `before` and rehashes it in the background.
    await store.rehash_password(
        session.user_id, b"$2b$04$" + b"x" * 53, 2, replacing=before["password_hash"]
    )
    assert await log_in(handlers, await username_of(handlers, session), NEW_PASSWORD)


async def test_a_login_that_checked_the_old_password_during_a_change_gets_no_session(
    handlers: AccountHandlers,
    store: AccountStore,
    primary: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The change ends every other session; a login whose hash check of the old password was
    in flight meanwhile must not open one after it (an attacker who knows the old password
    would keep logging in to outlive the owner's change)."""
    (this,) = await new_account(handlers)
    username = await username_of(handlers, this)
    find_credentials = store.find_credentials
    reads: list[str] = []
    changed: list[int] = []

    async def read_then_change(name: str) -> Credentials | None:
        reads.append(name)
        found = await find_credentials(name)
        if len(reads) == 1:  # the login's read; the change's own password check reads again
            changed.append(
                (await call(handlers, methods.CHANGE_PASSWORD, change(this))).sessions_ended
            )
        return found

    monkeypatch.setattr(store, "find_credentials", read_then_change)
    refused_for_the_change = counted(metrics.LOGINS.labels("password_changed")._value.get)
    refused = await refusal(
        handlers, methods.AUTHENTICATE, pb.AuthenticateRequest(username=username, password=PASSWORD)
    )

    assert changed == [0]
    assert refused.reason == "invalid_credentials"
    assert refused_for_the_change() == 1
    live = await primary.fetch_one(
        "operation",
        "SELECT COUNT(*) AS n FROM sessions WHERE user_id = %s AND revoked_at IS NULL",
        (this.user_id,),
    )
    assert live == {"n": 1}  # the changing session's own
    await assert_a_late_login_gets_no_session(store, primary, this.user_id, PasswordChanged)


async def test_a_password_change_racing_the_deletion_is_told_its_session_ended(
    handlers: AccountHandlers, store: AccountStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deletion commits between the change's session check and its read of the hash: the
    owner's right password must not be answered as wrong, nor count as a failed login."""
    this, other = await new_account(handlers, sessions=2)
    find_credentials = store.find_credentials
    reads: list[str] = []
    deleted: list[pb.DeleteAccountReply] = []

    async def deleted_first(name: str) -> Credentials | None:
        reads.append(name)
        if len(reads) == 1:  # the change's read; the deletion's own check reads again
            deleted.append(await call(handlers, methods.DELETE_ACCOUNT, deletion(other)))
        return await find_credentials(name)

    monkeypatch.setattr(store, "find_credentials", deleted_first)
    failed_logins = counted(metrics.LOGINS.labels("unknown_user")._value.get)
    refused = await refusal(handlers, methods.CHANGE_PASSWORD, change(this))

    assert len(deleted) == 1
    assert (refused.status, refused.reason) == (pb.STATUS_UNAUTHENTICATED, "unauthenticated")
    assert failed_logins() == 0


async def test_a_rehash_is_no_password_change_for_a_login_in_flight(
    handlers: AccountHandlers, store: AccountStore, primary: Database
) -> None:
    """A rehash (new pepper or cost) keeps the password: a concurrent login of the same account
    still gets its session."""
    (session,) = await new_account(handlers)
    before = await primary.fetch_one(
        "operation", "SELECT password_hash FROM users WHERE id = %s", (session.user_id,)
    )
    assert before is not None
    await store.rehash_password(
        session.user_id, b"$2b$04$" + b"x" * 53, 2, replacing=before["password_hash"]
    )
    await store.create_session(
        session.user_id, "login-beside-a-rehash", datetime.now(UTC) + timedelta(hours=1),
        password_changes=0,
    )  # fmt: skip


# The deletion


async def test_a_deletion_erases_the_account_and_ends_every_session(
    handlers: AccountHandlers, primary: Database, redis: Redis
) -> None:
    this, other = await new_account(handlers, sessions=2)
    username = await username_of(handlers, this)
    await call(
        handlers,
        methods.UPDATE_PROFILE,
        pb.UpdateProfileRequest(
            session=this, nickname="Secret Name", avatar_key=f"{this.user_id}/{'a' * 64}.webp"
        ),
    )
    await primary.execute(
        "operation",
        "UPDATE sessions SET user_agent = 'Firefox', ip = '198.51.100.9' WHERE user_id = %s",
        (this.user_id,),
    )

    reply = await call(handlers, methods.DELETE_ACCOUNT, deletion(this))

    assert reply.avatar_key == f"{this.user_id}/{'a' * 64}.webp"
    assert not await is_live(handlers, this) and not await is_live(handlers, other)
    user = await primary.fetch_one(
        "operation",
        "SELECT username, nickname, password_hash, avatar_key, deleted_at FROM users WHERE id = %s",
        (this.user_id,),
    )
    assert user is not None and user["deleted_at"] is not None
    assert (user["username"], user["nickname"], user["password_hash"], user["avatar_key"]) == (
        username,
        "",
        b"",
        None,
    )
    sessions = await primary.fetch_all(
        "operation",
        "SELECT revoked_at, user_agent, ip, last_seen_at FROM sessions WHERE user_id = %s",
        (this.user_id,),
    )
    assert len(sessions) == 2
    assert all(row["revoked_at"] is not None for row in sessions)
    assert {(row["user_agent"], row["ip"], row["last_seen_at"]) for row in sessions} == {
        (None, None, None)
    }
    cached = await redis.get(profile_key(this.user_id))
    assert cached is not None and b"Secret Name" not in cached
    assert json.loads(cached)["data"]["deleted"] is True


async def test_a_deleted_account_is_like_an_unknown_name_to_logins_and_taken_to_signups(
    handlers: AccountHandlers,
) -> None:
    (session,) = await new_account(handlers)
    username = await username_of(handlers, session)
    await call(handlers, methods.DELETE_ACCOUNT, deletion(session))
    unknown_names = counted(metrics.LOGINS.labels("unknown_user")._value.get)

    login = await refusal(
        handlers, methods.AUTHENTICATE, pb.AuthenticateRequest(username=username, password=PASSWORD)
    )
    signup = await refusal(
        handlers, methods.REGISTER, pb.RegisterRequest(username=username, password=PASSWORD)
    )

    assert login.status == pb.STATUS_UNAUTHENTICATED and login.reason == "invalid_credentials"
    assert unknown_names() == 1  # the dummy hash an unknown name costs, not the account's
    assert signup.status == pb.STATUS_CONFLICT


async def test_with_reuse_a_deleted_username_is_free_for_a_new_signup(
    make_handlers: HandlersFactory, primary: Database
) -> None:
    handlers = make_handlers(reuse_deleted_usernames=True)
    (session,) = await new_account(handlers)
    username = await username_of(handlers, session)
    await call(handlers, methods.DELETE_ACCOUNT, deletion(session))

    created = await call(
        handlers, methods.REGISTER, pb.RegisterRequest(username=username, password="another one")
    )

    assert created.user.id != session.user_id
    newcomer = await log_in(handlers, username, "another one")
    assert newcomer.user_id == created.user.id
    row = await primary.fetch_one(
        "operation", "SELECT username FROM users WHERE id = %s", (session.user_id,)
    )
    assert row == {"username": freed_username(session.user_id)}


async def test_a_wrong_password_deletes_nothing(handlers: AccountHandlers) -> None:
    (session,) = await new_account(handlers)
    refused = await refusal(handlers, methods.DELETE_ACCOUNT, deletion(session, "wrong one"))
    assert refused.status == pb.STATUS_UNAUTHENTICATED and refused.reason == "invalid_credentials"
    assert await is_live(handlers, session)


# Races: nothing written for the account after its deletion may bring it back.


async def test_a_login_whose_password_was_checked_before_the_deletion_gets_no_session(
    handlers: AccountHandlers, store: AccountStore, primary: Database
) -> None:
    (session,) = await new_account(handlers)
    await call(handlers, methods.DELETE_ACCOUNT, deletion(session))
    await assert_a_late_login_gets_no_session(store, primary, session.user_id, AccountDeleted)


async def test_a_profile_change_after_the_deletion_is_refused_as_account_deleted(
    handlers: AccountHandlers, primary: Database
) -> None:
    (session,) = await new_account(handlers)
    await call(handlers, methods.DELETE_ACCOUNT, deletion(session))
    refused = await refusal(
        handlers,
        methods.UPDATE_PROFILE,
        pb.UpdateProfileRequest(session=session, avatar_key=f"{session.user_id}/{'b' * 64}.webp"),
    )
    assert refused.status == pb.STATUS_UNAUTHENTICATED and refused.reason == "account_deleted"
    row = await primary.fetch_one(
        "operation", "SELECT avatar_key FROM users WHERE id = %s", (session.user_id,)
    )
    assert row == {"avatar_key": None}


async def test_a_nickname_change_recorded_after_the_deletion_does_not_resurrect_the_profile(
    handlers: AccountHandlers,
    store: AccountStore,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The nickname change commits first, but its profile reaches Redis only after the deletion
    is done: the cache must keep the erased profile."""
    (session,) = await new_account(handlers)
    cache = store.cache
    record_write = cache.record_write
    committed, release = asyncio.Event(), asyncio.Event()

    async def held_record_write(entries: list[CacheEntry]) -> bool:
        if not committed.is_set():
            committed.set()
            await release.wait()
        return await record_write(entries)

    monkeypatch.setattr(cache, "record_write", held_record_write)
    renaming = asyncio.create_task(
        call(
            handlers,
            methods.UPDATE_PROFILE,
            pb.UpdateProfileRequest(session=session, nickname="Resurrected"),
        )
    )
    await asyncio.wait_for(committed.wait(), 10.0)
    await call(handlers, methods.DELETE_ACCOUNT, deletion(session))
    release.set()
    await renaming  # it had committed before the deletion: it succeeded

    cached = await redis.get(profile_key(session.user_id))
    assert cached is not None and b"Resurrected" not in cached
    assert await store.session_profile(session.user_id, session.session_id) is None
