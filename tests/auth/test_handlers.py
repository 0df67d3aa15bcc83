"""The RPC methods on a real store, hasher, token issuer and etcd worker-id claim."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import jwt
import pytest
from prometheus_client import REGISTRY

from services.auth.accounts import AccountStore
from services.auth.admin_handlers import AdminHandlers
from services.auth.blob_handlers import BlobHandlers
from services.auth.devices import DeviceCookies
from services.auth.handlers import AccountHandlers
from services.auth.passwords import PasswordHasher
from services.auth.pepper_usage_handler import PepperUsageHandler
from services.auth.session_handlers import SessionHandlers
from services.auth.signing.ring import NoSigningKey
from services.auth.snowflake import DATABASE_WORKER_ID, WorkerIdClaim, decode_id
from services.auth.store.blobs import BlobTable
from services.auth.store.database import Database
from services.auth.store.id_blocks import IdBlocks
from services.auth.throttle import LoginThrottle
from services.auth.throttle_rules import ThrottleLimits
from services.auth.tokens import (
    IssuedToken,
    TokenIssuer,
    generate_private_key_pem,
    load_private_key,
)
from services.auth.user_ids import UserIds
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.contract.method import Method, ReplyT, RequestT
from services.foundation.rpc.protocol import RpcError
from services.foundation.rpc.routes import by_number

# These tests repeat failures at will; the throttle has tests of its own (test_throttle.py).
UNTHROTTLED = ThrottleLimits(failures=10**9, ip_failures=10**9, signup_conflicts=10**9)


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer(load_private_key(generate_private_key_pem()), ttl_seconds=600)


@pytest.fixture
async def handlers(
    store: AccountStore, issuer: TokenIssuer, claimed_worker_ids: WorkerIdClaim
) -> AsyncIterator[AccountHandlers]:
    hasher = PasswordHasher({1: b"pepper"}, cost=4, threads=2, queue_limit=8)
    yield account_handlers(store, hasher, issuer, claimed_worker_ids)
    hasher.close()


def account_handlers(
    store: AccountStore,
    hasher: PasswordHasher,
    issuer: TokenIssuer,
    worker_ids: WorkerIdClaim,
    limits: ThrottleLimits = UNTHROTTLED,
) -> AccountHandlers:
    """The handlers of one test replica on `store`, with its own hasher and throttle limits."""
    return AccountHandlers(
        store,
        hasher,
        issuer,
        UserIds(worker_ids, IdBlocks(store.primary, 16)),
        "test-instance",
        "test",
        throttle=LoginThrottle(store.cache, limits),
        devices=DeviceCookies("device-cookie-secret-for-these-tests", 3600),
    )


def _deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def call(
    handlers: AccountHandlers,
    method: Method[RequestT, ReplyT],
    request: RequestT,
    deadline: float | None = None,
) -> ReplyT:
    """The call as the server makes it: through the method's route, payloads both ways."""
    route = by_number(handlers.routes())[method.number]
    payload = await route.serve(request.SerializeToString(), deadline or _deadline())
    return method.reply_type.FromString(payload)


async def register_and_login(handlers: AccountHandlers, username: str) -> pb.AuthenticateReply:
    await call(
        handlers, methods.REGISTER, pb.RegisterRequest(username=username, password="password1")
    )
    return await call(
        handlers,
        methods.AUTHENTICATE,
        pb.AuthenticateRequest(username=username, password="password1"),
    )


async def test_full_session_lifecycle(handlers: AccountHandlers, issuer: TokenIssuer) -> None:
    username = f"h{uuid.uuid4().hex[:10]}"
    login = await register_and_login(handlers, username)
    claims = jwt.decode(login.token, options={"verify_signature": False})
    assert claims["sub"] == str(login.user.id)
    session = pb.SessionRef(user_id=login.user.id, session_id=claims["sid"])
    profile = await call(handlers, methods.GET_PROFILE, pb.GetProfileRequest(session=session))
    assert (profile.user.username, profile.user.nickname) == (username, username)
    updated = await call(
        handlers, methods.UPDATE_PROFILE, pb.UpdateProfileRequest(session=session, nickname="Nick")
    )
    assert updated.user.nickname == "Nick"
    await call(handlers, methods.LOGOUT, pb.LogoutRequest(session=session))
    with pytest.raises(RpcError) as ended:
        await call(handlers, methods.GET_PROFILE, pb.GetProfileRequest(session=session))
    assert (ended.value.status, ended.value.reason) == (
        pb.STATUS_UNAUTHENTICATED,
        "unauthenticated",
    )


async def test_session_of_another_user_is_refused(handlers: AccountHandlers) -> None:
    first = await register_and_login(handlers, f"h{uuid.uuid4().hex[:10]}")
    second = await register_and_login(handlers, f"h{uuid.uuid4().hex[:10]}")
    first_sid = jwt.decode(first.token, options={"verify_signature": False})["sid"]
    stolen = pb.SessionRef(user_id=second.user.id, session_id=first_sid)
    with pytest.raises(RpcError) as refused:
        await call(handlers, methods.GET_PROFILE, pb.GetProfileRequest(session=stolen))
    assert refused.value.status == pb.STATUS_UNAUTHENTICATED


@pytest.mark.parametrize(
    ("request_fields", "reason"),
    [
        ({"username": "no", "password": "password1"}, "invalid_username"),
        ({"username": "okname", "password": "short"}, "invalid_password"),
        (
            {"username": "okname", "password": "password1", "nickname": "bad\nname"},
            "invalid_nickname",
        ),
    ],
)
async def test_register_refuses_rule_breakers(
    handlers: AccountHandlers, request_fields: dict[str, str], reason: str
) -> None:
    with pytest.raises(RpcError) as refused:
        await call(handlers, methods.REGISTER, pb.RegisterRequest(**request_fields))
    assert (refused.value.status, refused.value.reason) == (pb.STATUS_INVALID, reason)


async def test_empty_nickname_update_is_invalid(handlers: AccountHandlers) -> None:
    login = await register_and_login(handlers, f"h{uuid.uuid4().hex[:10]}")
    sid = jwt.decode(login.token, options={"verify_signature": False})["sid"]
    session = pb.SessionRef(user_id=login.user.id, session_id=sid)
    with pytest.raises(RpcError) as refused:
        await call(
            handlers, methods.UPDATE_PROFILE, pb.UpdateProfileRequest(session=session, nickname="")
        )
    assert refused.value.reason == "invalid_nickname"


async def test_register_without_a_worker_id_takes_its_id_from_a_database_block(
    handlers: AccountHandlers, claimed_worker_ids: WorkerIdClaim
) -> None:
    await claimed_worker_ids.stop()
    username = f"h{uuid.uuid4().hex[:10]}"
    created = await call(
        handlers, methods.REGISTER, pb.RegisterRequest(username=username, password="password1")
    )
    assert decode_id(created.user.id).worker_id == DATABASE_WORKER_ID
    login = await call(
        handlers,
        methods.AUTHENTICATE,
        pb.AuthenticateRequest(username=username, password="password1"),
    )
    assert login.user.id == created.user.id


class _RepeatingIds(UserIds):
    """Hands out one id again and again: two id sources that made the same id."""

    def __init__(self, user_id: int) -> None:
        self._user_id = user_id

    async def next_id(self) -> int:
        return self._user_id


async def test_a_user_id_made_twice_fails_the_signup_and_leaves_the_first_account(
    handlers: AccountHandlers, store: AccountStore, issuer: TokenIssuer
) -> None:
    first = f"h{uuid.uuid4().hex[:10]}"
    created = await call(
        handlers, methods.REGISTER, pb.RegisterRequest(username=first, password="password1")
    )
    hasher = PasswordHasher({1: b"pepper"}, cost=4, threads=1, queue_limit=8)
    colliding = AccountHandlers(
        store,
        hasher,
        issuer,
        _RepeatingIds(created.user.id),
        "test-instance",
        "test",
        throttle=LoginThrottle(store.cache, UNTHROTTLED),
        devices=DeviceCookies("device-cookie-secret-for-these-tests", 3600),
    )
    second = f"h{uuid.uuid4().hex[:10]}"
    try:
        with pytest.raises(RpcError) as refused:
            await call(
                colliding,
                methods.REGISTER,
                pb.RegisterRequest(username=second, password="password2"),
            )
    finally:
        hasher.close()
    assert (refused.value.status, refused.value.reason) == (
        pb.STATUS_UNAVAILABLE,
        "user_id_taken",
    )
    assert await store.find_credentials(second) is None
    kept = await store.find_credentials(first)
    assert kept is not None and kept.user.id == created.user.id and kept.user.username == first


async def test_every_method_of_the_table_has_one_route(
    handlers: AccountHandlers, store: AccountStore, primary: Database
) -> None:
    served = by_number(
        [
            *handlers.routes(),
            *SessionHandlers(store).routes(),
            *BlobHandlers(BlobTable(primary, []), store).routes(),
            *AdminHandlers(store, reuse_deleted_usernames=False).routes(),
            *PepperUsageHandler(primary).routes(),
        ]
    )
    assert {number: route.method for number, route in served.items()} == methods.BY_NUMBER


async def test_undecodable_payload_is_invalid_request(handlers: AccountHandlers) -> None:
    with pytest.raises(RpcError) as refused:
        route = by_number(handlers.routes())[methods.REGISTER.number]
        await route.serve(b"\xff\xff\xff", _deadline())
    assert (refused.value.status, refused.value.reason) == (pb.STATUS_INVALID, "invalid_request")


async def test_login_past_its_deadline_is_overloaded_not_computed(
    handlers: AccountHandlers,
) -> None:
    request = pb.AuthenticateRequest(username=f"h{uuid.uuid4().hex[:10]}", password="password1")
    with pytest.raises(RpcError) as refused:
        await call(handlers, methods.AUTHENTICATE, request, asyncio.get_running_loop().time() - 1)
    assert refused.value.status == pb.STATUS_OVERLOADED


async def test_a_signup_with_an_invalid_name_is_a_client_error_even_when_overloaded(
    handlers: AccountHandlers,
) -> None:
    """Validation costs microseconds and its answer holds whatever the load: a past deadline
    (what a full hash queue answers alike) must not turn a bad name into a 503."""
    request = pb.RegisterRequest(username="x", password="password1")
    with pytest.raises(RpcError) as refused:
        await call(handlers, methods.REGISTER, request, asyncio.get_running_loop().time() - 1)
    assert refused.value.status == pb.STATUS_INVALID


def rehashes_postponed(cause: str) -> float:
    return (
        REGISTRY.get_sample_value("gatehouse_auth_rehashes_postponed_total", {"cause": cause})
        or 0.0
    )


async def test_postponed_rehashes_are_counted_and_logged_once_not_per_login(
    handlers: AccountHandlers, caplog: pytest.LogCaptureFixture
) -> None:
    """After a pepper rotation every login schedules a rehash; while the hash queue refuses
    them (here: a deadline long past), a line each would flood the log."""
    before = rehashes_postponed("overloaded")
    long_ago = asyncio.get_running_loop().time() - 3600
    with caplog.at_level(logging.INFO, logger="services.auth.handlers"):
        for user_id in range(1, 21):
            await handlers._rehash(user_id, "password1", b"old-hash", long_ago, "203.0.113.7")
    assert rehashes_postponed("overloaded") == before + 20
    lines = [record for record in caplog.records if "not moved" in record.getMessage()]
    assert len(lines) == 1


class UnsyncedKeys:
    """The key ring of a replica started while etcd was away: no key chosen to sign with."""

    kid: str | None = None

    def issue(self, user_id: int, session_id: str) -> IssuedToken:
        raise NoSigningKey("no signing key chosen yet")


def hashes_computed() -> float:
    return (
        REGISTRY.get_sample_value("gatehouse_auth_password_hashes_total", {"outcome": "computed"})
        or 0.0
    )


async def test_a_login_on_a_replica_without_a_signing_key_is_refused_before_the_hash(
    store: AccountStore, claimed_worker_ids: WorkerIdClaim, handlers: AccountHandlers
) -> None:
    """A replica restarted while etcd was away checked the password (a hash) and then failed
    to sign: INTERNAL, a 500 for the user. It refuses first now, DRAINING with reason
    not_ready, which the HTTP tier retries on another replica."""
    username = f"h{uuid.uuid4().hex[:10]}"
    await register_and_login(handlers, username)
    hasher = PasswordHasher({1: b"pepper"}, cost=4, threads=1, queue_limit=8)
    unsynced = account_handlers(store, hasher, UnsyncedKeys(), claimed_worker_ids)
    hashed = hashes_computed()
    try:
        with pytest.raises(RpcError) as refused:
            await call(
                unsynced,
                methods.AUTHENTICATE,
                pb.AuthenticateRequest(username=username, password="password1"),
            )
    finally:
        hasher.close()
    assert (refused.value.status, refused.value.reason) == (pb.STATUS_DRAINING, "not_ready")
    assert hashes_computed() == hashed


def expired_before_write(method: str) -> float:
    labels = {"method": method, "stage": "before_write"}
    return REGISTRY.get_sample_value("gatehouse_auth_rpc_expired_total", labels) or 0.0


async def test_writes_whose_caller_gave_up_are_refused_and_write_nothing(
    handlers: AccountHandlers,
) -> None:
    """Past its deadline the caller has answered "failed": the profile change and the logout
    must not happen after all (a later change by the same client would be overwritten)."""
    login = await register_and_login(handlers, f"h{uuid.uuid4().hex[:10]}")
    sid = jwt.decode(login.token, options={"verify_signature": False})["sid"]
    session = pb.SessionRef(user_id=login.user.id, session_id=sid)
    given_up = asyncio.get_running_loop().time() - 0.001
    refused_before = expired_before_write("update_profile")
    with pytest.raises(RpcError) as refused:
        await call(
            handlers,
            methods.UPDATE_PROFILE,
            pb.UpdateProfileRequest(session=session, nickname="too late"),
            given_up,
        )
    assert (refused.value.status, refused.value.reason) == (
        pb.STATUS_UNAVAILABLE,
        "deadline_exceeded",
    )
    assert expired_before_write("update_profile") == refused_before + 1
    with pytest.raises(RpcError) as refused:
        await call(handlers, methods.LOGOUT, pb.LogoutRequest(session=session), given_up)
    assert refused.value.reason == "deadline_exceeded"
    profile = await call(handlers, methods.GET_PROFILE, pb.GetProfileRequest(session=session))
    assert profile.user.nickname == login.user.nickname  # unchanged, and the session is live
