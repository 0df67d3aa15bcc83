"""CHANGE_PASSWORD: a session's owner sets a new password; every other session of theirs ends.

The current password is checked as a login's is (services/auth/password_checks.py: the login
throttle counts a wrong one, and refuses before any hash), the new one must follow the signup
rules and is hashed under the current pepper and cost, and the hash is stored together with the
revocation of the other sessions (AccountStore.change_password, the logout's revocation path).
"""

from __future__ import annotations

import logging

from services.auth import metrics
from services.auth.accounts import AccountStore
from services.auth.password_checks import (
    PasswordChecks,
    hashing_client,
    overloaded,
    session_ended,
)
from services.auth.passwords import Overloaded, PasswordHasher
from services.auth.validation import InvalidField, validate_password
from services.contract import auth_pb2 as pb
from services.foundation.rpc.protocol import RpcError

log = logging.getLogger(__name__)


class PasswordChange:
    def __init__(self, store: AccountStore, hasher: PasswordHasher, checks: PasswordChecks) -> None:
        self._store = store
        self._hasher = hasher
        self._checks = checks

    async def change_password(
        self, request: pb.ChangePasswordRequest, deadline: float
    ) -> pb.ChangePasswordReply:
        try:
            validate_password(request.new_password)
        except InvalidField as exc:
            raise RpcError(pb.STATUS_INVALID, exc.message, exc.reason) from None
        credentials = await self._checks.check_caller(
            "change_password",
            request.session,
            request.current_password,
            request.client_ip,
            request.device_cookie,
            deadline,
        )
        try:
            password_hash, pepper_version = await self._hasher.hash_password(
                request.new_password, deadline, hashing_client(request.client_ip)
            )
        except Overloaded as exc:
            raise overloaded(exc) from None
        ended = await self._store.change_password(
            credentials.user.id,
            request.session.session_id,
            password_hash,
            pepper_version,
            not_after=deadline,
        )
        if ended is None:
            raise session_ended()  # logged out (or deleted) while the hash ran
        metrics.ACCOUNT_CHANGES.labels("password_changed").inc()
        log.info(
            "user %d changed their password; %d other sessions ended", credentials.user.id, ended
        )
        return pb.ChangePasswordReply(sessions_ended=ended)
