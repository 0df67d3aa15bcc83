"""The RPC methods of the auth service: apply the account rules to a request, answer.

Handlers take the decoded request and return the reply message; their routes (`routes()`,
services.foundation.rpc.routes) decode and encode.

Every failure a caller can act on leaves as an RpcError with a status and a snake_case
reason; the HTTP tier turns the reason into its error code.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from services.auth import metrics
from services.auth.account_deletion import AccountDeletion
from services.auth.accounts import (
    USER_AGENT_COLUMN_LENGTH,
    AccountDeleted,
    AccountLocked,
    AccountStore,
    PasswordChanged,
    PictureMissing,
    SessionDevice,
    UserIdTaken,
    UsernameTaken,
    UserRecord,
)
from services.auth.devices import DeviceCookies
from services.auth.password_change import PasswordChange
from services.auth.password_checks import (
    PasswordChecks,
    account_deleted,
    account_locked,
    hashing_client,
    invalid_credentials,
    overloaded,
    session_ended,
)
from services.auth.passwords import Overloaded, PasswordHasher
from services.auth.security_log import SecurityLog
from services.auth.signing.ring import IssuesTokens
from services.auth.signup_limit import SignupLimit
from services.auth.store.blobs import picture_owner
from services.auth.store.database import DatabaseError, DeadlinePassed, PrimaryDown
from services.auth.throttle import LoginThrottle
from services.auth.tokens import new_session_id
from services.auth.user_ids import UserIds
from services.auth.validation import (
    InvalidField,
    resolve_nickname,
    validate_password,
    validate_username,
)
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.contract.method import Method, ReplyT, RequestT
from services.foundation.log_throttle import RepeatedWarnings
from services.foundation.rpc import server_metrics
from services.foundation.rpc.protocol import NOT_READY_REASON, RpcError
from services.foundation.rpc.routes import Handler, Route

log = logging.getLogger(__name__)
# A database failure is seen by every call meanwhile: one line per 10 s, not one per call.
_database_warnings = RepeatedWarnings(log, 10.0)
_rehash_warnings = RepeatedWarnings(log, 10.0)
# UpdateProfile's refusal of a picture whose blob is gone (auth.proto, picture_stored_here).
PICTURE_MISSING = "picture_missing"


# Errors are built afresh for every raise: raising one shared instance again chains each new
# traceback onto the old one, keeping every frame it passed through (and the frames' locals,
# passwords included) alive for the life of the process.
def _invalid(exc: InvalidField) -> RpcError:
    return RpcError(pb.STATUS_INVALID, exc.message, exc.reason)


def _check_picture_key(key: str, user_id: int) -> None:
    """A profile names a picture of its own user: anything else is refused INVALID, so that no
    key a blob store could read otherwise (`..`, a query), or a CLI would print raw, is stored."""
    if picture_owner(key) != user_id:
        raise RpcError(
            pb.STATUS_INVALID,
            "avatar_key must be a picture key of the session's user: <user id>/<sha256>.webp",
            "invalid_avatar_key",
        )


def _overloaded(exc: Overloaded) -> RpcError:
    return overloaded(exc)


def _database_failures_as_unavailable(
    method: Method[RequestT, ReplyT], handler: Handler[RequestT, ReplyT]
) -> Handler[RequestT, ReplyT]:
    async def guarded(request: RequestT, deadline: float) -> ReplyT:
        try:
            return await handler(request, deadline)
        except DeadlinePassed as exc:
            # The caller has answered its client "failed": the write must not land later.
            server_metrics.RPC_EXPIRED.labels(method.name, "before_write").inc()
            _database_warnings.warn("deadline_before_write", "%s", exc)
            raise RpcError(
                pb.STATUS_UNAVAILABLE,
                "the call's deadline passed before its write could start; nothing was written",
                "deadline_exceeded",
            ) from None
        except PrimaryDown:
            # Refused before any query; the primary's health logged the outage once.
            raise RpcError(
                pb.STATUS_UNAVAILABLE,
                "the database primary is down: writes, logins and signups are refused until it is"
                " back (reads still work); retry shortly",
                "primary_unavailable",
                retry_after_seconds=1,
            ) from None
        except DatabaseError as exc:
            _database_warnings.warn("database_unavailable", "database unavailable: %s", exc)
            raise RpcError(
                pb.STATUS_UNAVAILABLE,
                "the database is unavailable; retry shortly",
                "database_unavailable",
            ) from None

    return guarded


def _route(
    method: Method[RequestT, ReplyT], handler: Handler[RequestT, ReplyT]
) -> Route[RequestT, ReplyT]:
    return Route(method, _database_failures_as_unavailable(method, handler))


def session_device(user_agent: str, client_ip: str) -> SessionDevice:
    """What a login records of its client: the User-Agent cut to its column (the HTTP tier cuts
    it too), and the client address only if it is one."""
    try:
        ip = str(ipaddress.ip_address(client_ip)) if client_ip else ""
    except ValueError:
        ip = ""
    return SessionDevice(user_agent=user_agent[:USER_AGENT_COLUMN_LENGTH], ip=ip)


def user_message(user: UserRecord) -> pb.User:
    return pb.User(
        id=user.id,
        username=user.username,
        nickname=user.nickname,
        avatar_key=user.avatar_key or "",
        created_at_ms=int(user.created_at.timestamp() * 1000),
        updated_at_ms=int(user.updated_at.timestamp() * 1000),
    )


class AccountHandlers:
    def __init__(
        self,
        store: AccountStore,
        hasher: PasswordHasher,
        issuer: IssuesTokens,
        user_ids: UserIds,
        instance_id: str,
        release: str,
        *,
        throttle: LoginThrottle,
        devices: DeviceCookies,
        reuse_deleted_usernames: bool = False,
    ) -> None:
        self._store = store
        self._throttle = throttle
        self._devices = devices
        self._security_log = SecurityLog(devices.derived_key(b"gatehouse-security-log-names-v1"))
        self._password_checks = PasswordChecks(store, hasher, throttle, devices, self._security_log)
        self._signup_limit = SignupLimit(throttle, self._security_log)
        self._password_change = PasswordChange(store, hasher, self._password_checks)
        self._account_deletion = AccountDeletion(
            store, self._password_checks, reuse_deleted_usernames=reuse_deleted_usernames
        )
        self._hasher = hasher
        self._issuer = issuer
        self._user_ids = user_ids
        self._instance_id = instance_id
        self._release = release
        self._background: set[asyncio.Task[None]] = set()

    def routes(self) -> list[Route[Any, Any]]:
        return [
            _route(methods.PING, self.ping),
            _route(methods.REGISTER, self.register),
            _route(methods.AUTHENTICATE, self.authenticate),
            _route(methods.GET_PROFILE, self.get_profile),
            _route(methods.UPDATE_PROFILE, self.update_profile),
            _route(methods.LOGOUT, self.logout),
            _route(methods.CHANGE_PASSWORD, self._password_change.change_password),
            _route(methods.DELETE_ACCOUNT, self._account_deletion.delete_account),
        ]

    async def ping(self, request: pb.PingRequest, deadline: float) -> pb.PingReply:
        return pb.PingReply(instance_id=self._instance_id, release=self._release)

    async def register(self, request: pb.RegisterRequest, deadline: float) -> pb.RegisterReply:
        try:  # first: a client error is one whatever the load
            validate_username(request.username)
            validate_password(request.password)
            nickname = resolve_nickname(request.nickname, request.username)
        except InvalidField as exc:
            raise _invalid(exc) from None
        client = hashing_client(request.client_ip)
        try:
            self._hasher.check_admission(deadline, client)
        except Overloaded as exc:
            raise _overloaded(exc) from None
        self._store.require_primary("register")  # before the hash: only the primary stores it
        # Answers that reveal a name are limited per IP; creating accounts is not.
        await self._signup_limit.check(request.username, request.client_ip)
        # Spare the hash when the name is visibly taken; the unique index decides races.
        if await self._store.find_credentials(request.username) is not None:
            raise await self._signup_limit.taken(request.username, request.client_ip)
        try:
            password_hash, pepper_version = await self._hasher.hash_password(
                request.password, deadline, client
            )
        except Overloaded as exc:
            raise _overloaded(exc) from None
        # Made after the hash, which may outlast the etcd claim: UserIds picks the source now.
        user_id = await self._user_ids.next_id()
        try:
            user = await self._store.create_user(
                user_id,
                request.username,
                nickname,
                password_hash,
                pepper_version,
                not_after=deadline,
            )
        except UsernameTaken:
            raise await self._signup_limit.taken(request.username, request.client_ip) from None
        except UserIdTaken as exc:
            # Never merged into the account holding the id: this signup stored nothing.
            metrics.USER_ID_COLLISIONS.inc()
            log.error("%s; the signup was refused, retrying it is safe", exc)
            raise RpcError(
                pb.STATUS_UNAVAILABLE,
                "the new user id was already in use and nothing was stored; retry the signup",
                "user_id_taken",
            ) from None
        return pb.RegisterReply(user=user_message(user))

    async def authenticate(
        self, request: pb.AuthenticateRequest, deadline: float
    ) -> pb.AuthenticateReply:
        # Before the hash and the throttle: a session that cannot be stored is not worth a hash.
        self._store.require_primary("authenticate")
        if self._issuer.kid is None:
            # Started while etcd was away: no key synced to sign with. An HTTP tier that still
            # knows this address (its watch keeps the last set) retries the login elsewhere.
            metrics.LOGINS.labels("not_ready").inc()
            raise RpcError(
                pb.STATUS_DRAINING,
                "this replica has no signing key synced with etcd yet; retry on another",
                NOT_READY_REASON,
            )
        try:
            self._hasher.check_admission(deadline, hashing_client(request.client_ip))
        except Overloaded as exc:
            metrics.LOGINS.labels("overloaded").inc()
            raise _overloaded(exc) from None
        credentials = await self._password_checks.check(
            request.username,
            request.password,
            request.client_ip,
            request.device_cookie,
            deadline,
        )
        session_id = new_session_id()
        issued = self._issuer.issue(credentials.user.id, session_id)
        try:
            await self._store.create_session(
                credentials.user.id,
                session_id,
                issued.expires_at,
                session_device(request.user_agent, request.client_ip),
                password_changes=credentials.password_changes,
                not_after=deadline,
            )
        except AccountDeleted:
            raise invalid_credentials() from None  # deleted while its password was checked
        except PasswordChanged:
            # The password given was the account's when read, but a change has replaced it
            # (and ended every other session) while it was checked.
            metrics.LOGINS.labels("password_changed").inc()
            raise invalid_credentials() from None
        except AccountLocked:
            metrics.LOGINS.labels("locked").inc()
            raise account_locked() from None  # locked while its password was checked
        metrics.LOGINS.labels("success").inc()
        if self._hasher.needs_rehash(credentials.pepper_version, credentials.password_hash):
            self._in_background(
                lambda: self._rehash(
                    credentials.user.id,
                    request.password,
                    credentials.password_hash,
                    deadline,
                    hashing_client(request.client_ip),
                )
            )
        device = self._devices.mint(credentials.user.id)
        reply = pb.AuthenticateReply(
            token=issued.token,
            expires_at_ms=int(issued.expires_at.timestamp() * 1000),
            user=user_message(credentials.user),
            device_cookie=device.value,
            device_cookie_expires_at_ms=device.expires_at_ms,
        )
        return reply

    async def get_profile(self, request: pb.GetProfileRequest, deadline: float) -> pb.ProfileReply:
        user = await self._store.session_profile(
            request.session.user_id, request.session.session_id
        )
        if user is None:
            raise session_ended()
        return pb.ProfileReply(user=user_message(user))

    async def update_profile(
        self, request: pb.UpdateProfileRequest, deadline: float
    ) -> pb.ProfileReply:
        nickname = request.nickname if request.HasField("nickname") else None
        avatar_key = request.avatar_key if request.HasField("avatar_key") else None
        if nickname is not None:
            if not nickname:
                raise RpcError(pb.STATUS_INVALID, "a nickname cannot be empty", "invalid_nickname")
            try:
                resolve_nickname(nickname, username="")
            except InvalidField as exc:
                raise _invalid(exc) from None
        if avatar_key:
            _check_picture_key(avatar_key, request.session.user_id)
        if request.picture_stored_here:
            if avatar_key is None or nickname is not None:
                raise RpcError(
                    pb.STATUS_INVALID,
                    "picture_stored_here goes with an avatar_key and nothing else",
                    "invalid_request",
                )
            return await self._change_picture(request.session, avatar_key, deadline)
        try:
            user = await self._store.update_profile(
                request.session.user_id,
                request.session.session_id,
                nickname=nickname,
                avatar_key=avatar_key,
                not_after=deadline,
            )
        except AccountDeleted:
            raise account_deleted() from None
        if user is None:
            raise session_ended()
        return pb.ProfileReply(user=user_message(user))

    async def _change_picture(
        self, session: pb.SessionRef, avatar_key: str, deadline: float
    ) -> pb.ProfileReply:
        try:
            change = await self._store.change_picture(
                session.user_id, session.session_id, avatar_key, not_after=deadline
            )
        except AccountDeleted:
            raise account_deleted() from None
        except PictureMissing as exc:
            raise RpcError(pb.STATUS_INVALID, str(exc), PICTURE_MISSING) from None
        if change is None:
            raise session_ended()
        return pb.ProfileReply(
            user=user_message(change.user), replaced_avatar_key=change.replaced_avatar_key
        )

    async def logout(self, request: pb.LogoutRequest, deadline: float) -> pb.LogoutReply:
        if not await self._store.revoke_session(
            request.session.user_id, request.session.session_id, not_after=deadline
        ):
            raise session_ended()
        return pb.LogoutReply()

    async def _rehash(
        self, user_id: int, password: str, verified_hash: bytes, deadline: float, client: str
    ) -> None:
        """Move a password to the current pepper and cost after a successful login, unless it
        was changed meanwhile (`verified_hash` is no longer the stored one)."""
        try:
            password_hash, pepper_version = await self._hasher.hash_password(
                password, deadline + 60, client
            )
            await self._store.rehash_password(
                user_id, password_hash, pepper_version, replacing=verified_hash
            )
        except (Overloaded, DatabaseError) as exc:
            # Every login of a rotation's users schedules one: a line each would be a storm.
            cause = "overloaded" if isinstance(exc, Overloaded) else "database"
            metrics.REHASHES_POSTPONED.labels(cause).inc()
            if isinstance(exc, DatabaseError) and self._store.primary.outage_explains(exc):
                return  # the primary's one down line tells it
            _rehash_warnings.warn(
                cause,
                "password of user %d not moved to the current pepper and cost yet (a later "
                "login moves it): %s; repeats are counted in "
                "gatehouse_auth_rehashes_postponed_total and logged once per 10 s",
                user_id,
                exc,
                level=logging.INFO,
            )

    def _in_background(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.ensure_future(work())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
