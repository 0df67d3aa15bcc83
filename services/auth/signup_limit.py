"""The signup limit: answers that reveal a taken username are limited per client IP
(services/auth/throttle.py counts them). REGISTER asks before any work, and counts each
`username_taken` answer in the same atomic step that checks the limit, so concurrent signups of
taken names cannot pass it together: past the limit they get too_many_attempts instead."""

from __future__ import annotations

from services.auth.password_checks import too_many_attempts
from services.auth.security_log import SecurityLog
from services.auth.throttle import LoginThrottle, TooManyAttempts
from services.contract import auth_pb2 as pb
from services.foundation.client_address import client_address
from services.foundation.rpc.protocol import RpcError


def username_taken() -> RpcError:
    return RpcError(pb.STATUS_CONFLICT, "that username is taken", "username_taken")


class SignupLimit:
    def __init__(self, throttle: LoginThrottle, security_log: SecurityLog) -> None:
        self._throttle = throttle
        self._log = security_log

    async def check(self, username: str, client_ip: str) -> None:
        """Raise too_many_attempts if this address had its share of taken-name answers."""
        client = self._throttle.client(client_ip)
        try:
            await self._throttle.check_signup(client)
        except TooManyAttempts as exc:
            raise self._refusal(exc, username, client.for_log) from None

    async def taken(self, username: str, client_ip: str) -> RpcError:
        """The answer to a signup of a taken name: username_taken, counted, or
        too_many_attempts if this address had its share already."""
        client = client_address(client_ip)  # a missing client IP was noted by check()
        try:
            await self._throttle.count_taken_name(client)
        except TooManyAttempts as exc:
            return self._refusal(exc, username, client.for_log)
        return username_taken()

    def _refusal(self, exc: TooManyAttempts, username: str, shown_ip: str) -> RpcError:
        self._log.throttled(
            self._log.account(None, username), shown_ip, exc.limit, exc.retry_after_seconds
        )
        return too_many_attempts(exc.retry_after_seconds)
