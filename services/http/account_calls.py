"""The account calls that the JSON API and the pages share: the checks only the HTTP tier can
make (strings protobuf can carry), then the auth service, which applies every account rule.

Failures raise ApiError (the HTTP tier's checks, credential failures) or RpcError (the auth
service's answer; services.http.errors turns it into an ApiError).
"""

from __future__ import annotations

from collections.abc import Callable

from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.rpc.protocol import RpcError
from services.http.auth_client import AuthClient
from services.http.bodies import is_encodable
from services.http.callers import Caller
from services.http.errors import ApiError
from services.http.sessions import session_ref
from services.http.tokens import Session

_CREDENTIAL_FAILURES = (pb.STATUS_INVALID, pb.STATUS_UNAUTHENTICATED)
# The auth service's reason for the right password of a locked account (UNAUTHENTICATED).
ACCOUNT_LOCKED = "account_locked"


def invalid_field(field: str) -> ApiError:
    """For strings with lone surrogates: valid JSON that no UTF-8 string can hold."""
    return ApiError(
        400, f"invalid_{field}", f"`{field}` contains characters that are not valid Unicode"
    )


class AccountCalls:
    def __init__(self, auth: AuthClient) -> None:
        self._auth = auth

    @property
    def auth(self) -> AuthClient:
        return self._auth

    async def register(
        self, username: str, password: str, nickname: str | None, caller: Caller
    ) -> pb.User:
        """A new account; `nickname` None means "the username"."""
        for field, value in (
            ("username", username),
            ("password", password),
            ("nickname", nickname),
        ):
            if value is not None and not is_encodable(value):
                raise invalid_field(field)
        if nickname == "":
            # RegisterRequest.nickname cannot tell "" from absent (absent means "the username").
            raise ApiError(
                400,
                "invalid_nickname",
                "`nickname` must be 1 to 30 characters; omit it to use the username",
            )
        reply = await self._auth.call(
            methods.REGISTER,
            pb.RegisterRequest(
                username=username,
                password=password,
                nickname=nickname or "",
                client_ip=caller.client_ip,
                device_cookie=caller.device_cookie,
                user_agent=caller.user_agent,
            ),
        )
        return reply.user

    async def log_in(
        self,
        username: str,
        password: str,
        failure: Callable[[], ApiError],
        caller: Caller,
        *,
        locked: Callable[[], ApiError] | None = None,
    ) -> pb.AuthenticateReply:
        """A new session; every credential problem raises `failure()`, one answer for all, and
        so does a locked account unless `locked` is given. The login throttle's refusal leaves
        as an RpcError (429 too_many_attempts).

        Factories, not errors: an error held by a frame it is raised through would be in a
        cycle with that frame's traceback, which only the garbage collector frees (rarely, in
        the HTTP workers: services.foundation.heap), and wrong passwords are common."""
        if not (is_encodable(username) and is_encodable(password)):
            raise failure()
        try:
            return await self._auth.call(
                methods.AUTHENTICATE,
                pb.AuthenticateRequest(
                    username=username,
                    password=password,
                    client_ip=caller.client_ip,
                    device_cookie=caller.device_cookie,
                    user_agent=caller.user_agent,
                ),
            )
        except RpcError as error:
            if locked is not None and error.reason == ACCOUNT_LOCKED:
                raise locked() from None
            if error.status in _CREDENTIAL_FAILURES:
                raise failure() from None
            raise

    async def profile(self, session: Session) -> pb.User:
        reply = await self._auth.call(
            methods.GET_PROFILE, pb.GetProfileRequest(session=session_ref(session))
        )
        return reply.user

    async def change_nickname(self, session: Session, nickname: str) -> pb.User:
        if not is_encodable(nickname):
            raise invalid_field("nickname")
        return await self._update(
            pb.UpdateProfileRequest(session=session_ref(session), nickname=nickname)
        )

    async def change_avatar_key(
        self, session: Session, avatar_key: str, *, stored_here: bool
    ) -> pb.ProfileReply:
        """Point the profile at `avatar_key`. `stored_here`: the blob is in the auth service's
        blob table, which then checks it and deletes the replaced one in the same transaction
        (the reply's replaced_avatar_key; unset from an older replica, which did neither)."""
        request = pb.UpdateProfileRequest(
            session=session_ref(session), avatar_key=avatar_key, picture_stored_here=stored_here
        )
        return await self._auth.call(methods.UPDATE_PROFILE, request)

    async def log_out(self, session: Session) -> None:
        await self._auth.call(methods.LOGOUT, pb.LogoutRequest(session=session_ref(session)))

    async def _update(self, request: pb.UpdateProfileRequest) -> pb.User:
        reply = await self._auth.call(methods.UPDATE_PROFILE, request)
        return reply.user
