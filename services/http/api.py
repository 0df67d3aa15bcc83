"""The public JSON API (/api/v1) and the partner API (/open_api/v1).

Handlers validate what only the HTTP tier can (JSON shape and types, strings protobuf can
carry, the session token's signature and expiry) and leave every account rule to the auth
service, whose RpcErrors become API errors in services.http.errors.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.contract import auth_pb2 as pb
from services.foundation.protocol import RpcError
from services.http.auth_client import AuthClient
from services.http.bodies import is_encodable, optional_string, read_json_object, required_string
from services.http.errors import ApiError, unauthenticated
from services.http.settings import HttpSettings
from services.http.tokens import InvalidToken, Session, TokenVerifier
from services.http.views import rfc3339_utc, user_view

SESSION_COOKIE = "session"
_CREDENTIAL_FAILURES = (pb.STATUS_INVALID, pb.STATUS_UNAUTHENTICATED)
_NO_TOKEN = "send the session token as `Authorization: Bearer <token>` or the `session` cookie"


def invalid_field(field: str) -> ApiError:
    """For strings with lone surrogates: valid JSON that no UTF-8 string can hold."""
    return ApiError(
        400, f"invalid_{field}", f"`{field}` contains characters that are not valid Unicode"
    )


class Api:
    def __init__(self, auth: AuthClient, tokens: TokenVerifier, settings: HttpSettings) -> None:
        self._auth = auth
        self._tokens = tokens
        self._max_body_bytes = settings.max_body_bytes
        self._cookie_attributes = "; HttpOnly; SameSite=Lax; Path=/" + (
            "; Secure" if settings.cookie_secure else ""
        )

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/users", self.create_user, methods=["POST"]),
            Route("/api/v1/sessions", self.log_in, methods=["POST"]),
            Route("/api/v1/sessions/current", self.log_out, methods=["DELETE"]),
            Route("/api/v1/me", self.me, methods=["GET", "PATCH"]),
            Route("/open_api/v1/register", self.open_register, methods=["POST"]),
            Route("/open_api/v1/authenticate", self.open_authenticate, methods=["POST"]),
        ]

    # /api/v1

    async def create_user(self, request: Request) -> Response:
        user = await self._register(request)
        return JSONResponse(user_view(user), status_code=201)

    async def log_in(self, request: Request) -> Response:
        failure = ApiError(401, "invalid_credentials", "the username or password is wrong")
        reply = await self._authenticate(request, failure)
        lifetime = max(0, round(reply.expires_at_ms / 1000 - time.time()))
        response = JSONResponse(
            {
                "token": reply.token,
                "token_type": "Bearer",
                "expires_at": rfc3339_utc(reply.expires_at_ms),
                "user": user_view(reply.user),
            }
        )
        response.headers.append("set-cookie", self._session_cookie(reply.token, lifetime))
        return response

    async def log_out(self, request: Request) -> Response:
        session = self._session(request)
        await self._auth.call(
            pb.METHOD_LOGOUT, pb.LogoutRequest(session=_session_ref(session)), pb.LogoutReply
        )
        response = Response(status_code=204)
        response.headers.append("set-cookie", self._session_cookie("", 0))
        return response

    async def me(self, request: Request) -> Response:
        session = self._session(request)
        if request.method == "PATCH":
            reply = await self._update_profile(request, session)
        else:
            reply = await self._auth.call(
                pb.METHOD_GET_PROFILE,
                pb.GetProfileRequest(session=_session_ref(session)),
                pb.ProfileReply,
            )
        return JSONResponse(user_view(reply.user))

    # /open_api/v1

    async def open_register(self, request: Request) -> Response:
        user = await self._register(request)
        return JSONResponse({"id": str(user.id), "username": user.username})

    async def open_authenticate(self, request: Request) -> Response:
        failure = ApiError(
            404, "invalid_credentials", "no account matches this username and password"
        )
        reply = await self._authenticate(request, failure)
        return JSONResponse({"token": reply.token})

    # shared steps

    async def _register(self, request: Request) -> pb.User:
        body = await read_json_object(request, self._max_body_bytes)
        username = required_string(body, "username")
        password = required_string(body, "password")
        nickname = optional_string(body, "nickname")
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
            pb.METHOD_REGISTER,
            pb.RegisterRequest(username=username, password=password, nickname=nickname or ""),
            pb.RegisterReply,
        )
        return reply.user

    async def _authenticate(self, request: Request, failure: ApiError) -> pb.AuthenticateReply:
        """Log in; every credential problem raises `failure`, one answer for all of them."""
        body = await read_json_object(request, self._max_body_bytes)
        username = required_string(body, "username")
        password = required_string(body, "password")
        if not (is_encodable(username) and is_encodable(password)):
            raise failure
        try:
            return await self._auth.call(
                pb.METHOD_AUTHENTICATE,
                pb.AuthenticateRequest(username=username, password=password),
                pb.AuthenticateReply,
            )
        except RpcError as error:
            if error.status in _CREDENTIAL_FAILURES:
                raise failure from None
            raise

    async def _update_profile(self, request: Request, session: Session) -> pb.ProfileReply:
        body = await read_json_object(request, self._max_body_bytes)
        nickname = required_string(body, "nickname")
        if not is_encodable(nickname):
            raise invalid_field("nickname")
        return await self._auth.call(
            pb.METHOD_UPDATE_PROFILE,
            pb.UpdateProfileRequest(session=_session_ref(session), nickname=nickname),
            pb.ProfileReply,
        )

    def _session(self, request: Request) -> Session:
        token = _session_token(request)
        if token is None:
            raise unauthenticated(f"this call needs a session: {_NO_TOKEN}")
        try:
            return self._tokens.verify(token)
        except InvalidToken as exc:
            raise unauthenticated(f"the session token is not valid ({exc}); log in again") from None

    def _session_cookie(self, token: str, max_age: int) -> str:
        return f"{SESSION_COOKIE}={token}{self._cookie_attributes}; Max-Age={max_age}"


def _session_token(request: Request) -> str | None:
    """The Bearer token if one is sent, else the session cookie."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and credentials:
            return credentials
    return request.cookies.get(SESSION_COOKIE) or None


def _session_ref(session: Session) -> pb.SessionRef:
    return pb.SessionRef(user_id=session.user_id, session_id=session.session_id)
