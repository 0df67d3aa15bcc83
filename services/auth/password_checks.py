"""Every check of a user's current password, behind the login throttle: AUTHENTICATE, and the
calls that ask a session's owner for the current password (`check_caller`: a password change,
an account deletion), so failures anywhere count against one set of counters.

The order is what makes it cheap to refuse and mute about which names exist:
1. the account is looked up (an unknown name costs the same lookup) and a device cookie, if
   any, is checked against it;
2. the throttle admits the attempt or refuses it (429 upstream) before any hash is queued;
3. the password is verified, against the dummy hash for unknown names, so both cost the same;
4. the outcome settles the attempt: a success clears its key, a failure stays counted and is
   logged (services/auth/security_log.py) and counted in gatehouse_auth_logins_total;
5. a locked account (`gatehouse users lock`) with the right password is refused with
   `account_locked`; with a wrong one it fails as any wrong password does.
"""

from __future__ import annotations

import logging

from services.auth import metrics
from services.auth.accounts import AccountStore, Credentials, UserRecord
from services.auth.devices import DeviceCookies
from services.auth.passwords import Overloaded, PasswordHasher, UnknownPepperVersion
from services.auth.security_log import SecurityLog
from services.auth.throttle import LoginThrottle, TooManyAttempts
from services.auth.validation import PASSWORD_MAX_CODE_POINTS, InvalidField, validate_username
from services.contract import auth_pb2 as pb
from services.foundation.client_address import client_address
from services.foundation.log_throttle import RepeatedWarnings
from services.foundation.rpc.protocol import RpcError

TOO_MANY_ATTEMPTS = "too_many_attempts"
_missing_pepper = RepeatedWarnings(logging.getLogger(__name__), interval=60.0)
ACCOUNT_LOCKED = "account_locked"


def hashing_client(client_ip: str) -> str:
    """Whose turn a caller's password hashes take in the hasher (services/auth/passwords.py):
    the login throttle's IP key, so one address's queue of hashes cannot hold up another's."""
    return client_address(client_ip).key


def session_ended() -> RpcError:
    return RpcError(
        pb.STATUS_UNAUTHENTICATED, "the session has ended; log in again", "unauthenticated"
    )


def account_deleted() -> RpcError:
    """A write refused because the account was deleted meanwhile: the caller's session has
    ended with it, and whatever it stored for the account (a picture) belongs to nobody."""
    return RpcError(pb.STATUS_UNAUTHENTICATED, "the account has been deleted", "account_deleted")


def invalid_credentials() -> RpcError:
    return RpcError(
        pb.STATUS_UNAUTHENTICATED, "invalid username or password", "invalid_credentials"
    )


def account_locked() -> RpcError:
    return RpcError(
        pb.STATUS_UNAUTHENTICATED,
        "this account is locked: an operator must unlock it before it can log in",
        ACCOUNT_LOCKED,
    )


def too_many_attempts(retry_after_seconds: int) -> RpcError:
    """The throttle's refusal. OVERLOADED, so that an HTTP tier older than the throttle
    answers it as a 503 "busy" rather than as an internal error."""
    return RpcError(
        pb.STATUS_OVERLOADED,
        f"too many attempts; retry in {retry_after_seconds} s",
        TOO_MANY_ATTEMPTS,
        retry_after_seconds=retry_after_seconds,
    )


def overloaded(exc: Overloaded) -> RpcError:
    return RpcError(pb.STATUS_OVERLOADED, f"{exc}; retry in a moment", "overloaded")


class PasswordChecks:
    def __init__(
        self,
        store: AccountStore,
        hasher: PasswordHasher,
        throttle: LoginThrottle,
        devices: DeviceCookies,
        security_log: SecurityLog,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._throttle = throttle
        self._devices = devices
        self._log = security_log

    async def check(
        self,
        username: str,
        password: str,
        client_ip: str,
        device_cookie: str,
        deadline: float,
        *,
        owner: int | None = None,
    ) -> Credentials:
        """The account whose password this is, or RpcError: invalid_credentials,
        account_locked, too_many_attempts, overloaded; with `owner` (the id of the session's
        user that asks), `unauthenticated` if the name no longer leads to that account (it was
        deleted since the session was checked), with nothing counted or spent."""
        if len(password) > PASSWORD_MAX_CODE_POINTS:
            # No stored password is longer, and normalizing one of 64 KiB of combining marks
            # holds the GIL for seconds: refused before the throttle, the store and the hash.
            metrics.LOGINS.labels("too_long").inc()
            raise invalid_credentials()
        credentials = await self._find(username)
        if owner is not None and (credentials is None or credentials.user.id != owner):
            raise session_ended()
        account_id = credentials.user.id if credentials is not None else None
        # Checked for unknown names too (against no account), so a cookie costs the same.
        device_id = self._devices.device_of(device_cookie, account_id or 0)
        if account_id is None:
            device_id = None
        subject = self._throttle.subject(username, client_ip, device_id)
        label = self._log.account(account_id, username)
        try:
            admitted = await self._throttle.admit(subject, wait_until=deadline)
        except TooManyAttempts as exc:
            metrics.LOGINS.labels("throttled").inc()
            self._log.throttled(label, subject.client.for_log, exc.limit, exc.retry_after_seconds)
            raise too_many_attempts(exc.retry_after_seconds) from None
        except Overloaded as exc:  # cancelled while waiting for the checks ahead of it
            metrics.LOGINS.labels("overloaded").inc()
            raise overloaded(exc) from None
        try:
            if credentials is None:
                # Costs what a real verify costs, so timing does not tell which names exist.
                await self._hasher.verify_dummy(password, deadline, subject.client.key)
                correct, outcome = False, "unknown_user"
            else:
                correct = await self._hasher.verify_password(
                    password,
                    credentials.password_hash,
                    credentials.pepper_version,
                    deadline,
                    subject.client.key,
                )
                outcome = "wrong_password"
        except Overloaded as exc:
            await self._throttle.void(admitted)
            metrics.LOGINS.labels("overloaded").inc()
            raise overloaded(exc) from None
        except UnknownPepperVersion as exc:
            # GATEHOUSE_PEPPERS lost the version this hash needs: the account cannot log in
            # (README, "Rotating peppers"). A failed login for the caller, an error for operators.
            # Counted as one, as for unknown names: a name that is never throttled, or answered
            # at once (the hasher spent a dummy verify), would be one on a dropped pepper.
            await self._throttle.settle(admitted, success=False)
            metrics.LOGINS.labels("pepper_missing").inc()
            _missing_pepper.warn("missing", "a login cannot be checked: %s", exc)
            raise invalid_credentials() from None
        except BaseException:
            await self._throttle.void(admitted)
            raise
        await self._throttle.settle(admitted, success=correct)
        if not correct or credentials is None:
            metrics.LOGINS.labels(outcome).inc()
            self._log.failed_login(label, subject.client.for_log, outcome)
            raise invalid_credentials()
        if credentials.locked:
            metrics.LOGINS.labels("locked").inc()
            self._log.failed_login(label, subject.client.for_log, "account_locked")
            raise account_locked()
        return credentials

    async def check_caller(
        self,
        operation: str,
        session: pb.SessionRef,
        password: str,
        client_ip: str,
        device_cookie: str,
        deadline: float,
    ) -> Credentials:
        """`check` for the owner of a live session, as a login of that account from the same
        client, before `operation` writes: refused at once while the primary is down or the
        hasher would refuse the hash (nothing counted, nothing spent); RpcError
        `unauthenticated` when the session has ended; else as `check`."""
        self._store.require_primary(operation)
        try:
            self._hasher.check_admission(deadline, hashing_client(client_ip))
        except Overloaded as exc:
            raise overloaded(exc) from None
        user: UserRecord | None = await self._store.session_profile(
            session.user_id, session.session_id
        )
        if user is None:
            raise session_ended()
        return await self.check(
            user.username, password, client_ip, device_cookie, deadline, owner=user.id
        )

    async def _find(self, username: str) -> Credentials | None:
        """The account of a name, None for unknown names and deleted accounts alike."""
        try:
            validate_username(username)
        except InvalidField:
            return None
        credentials = await self._store.find_credentials(username)
        return None if credentials is None or credentials.deleted else credentials
