"""The public JSON API (/api/v1) and the partner API (/open_api/v1).

Handlers validate what only the HTTP tier can (JSON shape and types, the session token's
signature and expiry, CSRF for cookie-authenticated calls) and leave every account rule to the
auth service (services.http.account_calls), whose RpcErrors become API errors in
services.http.errors.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.contract import auth_pb2 as pb
from services.http.account_api import AccountApi
from services.http.avatars.keys import avatar_url
from services.http.avatars.replace import (
    MULTIPART_OVERHEAD_BYTES,
    UPLOAD_FIELD,
    picture_from_form,
    read_picture_form,
)
from services.http.bodies import (
    MULTIPART_MEDIA_TYPE,
    media_type_of,
    optional_string,
    read_body,
    read_json_object,
    refuse_declared_oversize,
    required_string,
)
from services.http.errors import ApiError, account_locked
from services.http.openapi.declare import (
    Operation,
    RawUpload,
    Success,
    documented,
    json_object,
)
from services.http.openapi.fields import (
    ANY_STRING,
    NICKNAME,
    OPTIONAL_NICKNAME,
    PASSWORD,
    USERNAME,
)
from services.http.views import USER, PrivateJSONResponse, rfc3339_utc, user_view

SIGNUP_BODY = json_object(
    {"username": USERNAME, "password": PASSWORD}, {"nickname": OPTIONAL_NICKNAME}
)
SIGNUP_REFUSALS = {
    400: ("invalid_username", "invalid_password", "invalid_nickname"),
    409: ("username_taken",),
    429: ("too_many_attempts",),  # after many `username_taken` answers to one client IP
}
LOGIN_BODY = json_object({"username": ANY_STRING, "password": ANY_STRING})
SESSION_COOKIES = {
    "Set-Cookie": "the session cookie (HttpOnly), the session's CSRF cookie and the device "
    "cookie; `__Host-` names under HTTPS"
}
PROFILE_SUCCESS = Success(200, "the caller's profile", USER)


def wrong_credentials() -> ApiError:
    return ApiError(401, "invalid_credentials", "the username or password is wrong")


def no_matching_account() -> ApiError:
    """The partner endpoint's one answer for every credential problem."""
    return ApiError(404, "invalid_credentials", "no account matches this username and password")


# What a login does past the auth service's cap (accounts.py MAX_SESSIONS_PER_USER).
SESSION_CAP = (
    "An account keeps at most 1,000 sessions: a login beyond that ends its oldest ones, as a"
    " logout does."
)


class Api(AccountApi):
    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/users", self.create_user, methods=["POST"]),
            Route("/api/v1/sessions", self.log_in, methods=["POST"]),
            Route("/api/v1/sessions/current", self.log_out, methods=["DELETE"]),
            Route("/api/v1/me", self.me, methods=["GET", "PATCH", "DELETE"]),
            *self.lifecycle_routes(),
            Route("/api/v1/me/avatar", self.put_avatar, methods=["PUT"]),
            Route("/open_api/v1/register", self.open_register, methods=["POST"]),
            Route("/open_api/v1/authenticate", self.open_authenticate, methods=["POST"]),
        ]

    # /api/v1

    @documented(
        Operation(
            "POST",
            "createUser",
            "Sign up",
            Success(201, "the new account", USER),
            SIGNUP_REFUSALS,
            json_body=SIGNUP_BODY,
            hashes_password=True,
        )
    )
    async def create_user(self, request: Request) -> Response:
        user = await self._register(request)
        return PrivateJSONResponse(user_view(user), status_code=201)

    @documented(
        Operation(
            "POST",
            "logIn",
            "Log in",
            Success(
                200,
                "a new session",
                json_object(
                    {
                        "token": {"type": "string", "description": "an EdDSA JWT"},
                        "token_type": {"const": "Bearer"},
                        "expires_at": {"type": "string", "format": "date-time"},
                        "user": USER,
                    }
                ),
                SESSION_COOKIES,
            ),
            {
                401: ("invalid_credentials",),  # one body for an unknown user and a wrong password
                403: ("account_locked",),  # the right password of a locked account
            },
            json_body=LOGIN_BODY,
            hashes_password=True,
            description=SESSION_CAP,
        )
    )
    async def log_in(self, request: Request) -> Response:
        reply = await self._authenticate(request, wrong_credentials, locked=account_locked)
        response = PrivateJSONResponse(
            {
                "token": reply.token,
                "token_type": "Bearer",
                "expires_at": rfc3339_utc(reply.expires_at_ms),
                "user": user_view(reply.user),
            }
        )
        for cookie in await self._sessions.login_cookies(reply.token, reply.expires_at_ms):
            response.headers.append("set-cookie", cookie)
        self._set_device_cookie(response, reply)
        return response

    @documented(
        Operation(
            "DELETE",
            "logOut",
            "End the calling session",
            Success(204, "the session has ended; the session cookie is cleared"),
            needs_session=True,
            tag="sessions",
        )
    )
    async def log_out(self, request: Request) -> Response:
        await self._accounts.log_out(await self._sessions.of_api_call(request))
        response = Response(status_code=204)
        for cookie in self._sessions.cleared_cookies():
            response.headers.append("set-cookie", cookie)
        return response

    @documented(
        Operation("GET", "getProfile", "The caller's profile", PROFILE_SUCCESS, needs_session=True),
        Operation(
            "PATCH",
            "changeNickname",
            "Change the nickname",
            PROFILE_SUCCESS,
            {400: ("invalid_nickname",)},
            json_body=json_object({"nickname": NICKNAME}),
            needs_session=True,
        ),
        AccountApi.DELETE_ME,
    )
    async def me(self, request: Request) -> Response:
        if request.method == "DELETE":
            return await self.delete_me(request)
        session = await self._sessions.of_api_call(request)
        if request.method == "PATCH":
            body = await read_json_object(request, self._max_body_bytes)
            user = await self._accounts.change_nickname(session, required_string(body, "nickname"))
        else:
            user = await self._accounts.profile(session)
        return PrivateJSONResponse(user_view(user))

    @documented(
        Operation(
            "PUT",
            "putAvatar",
            "Replace the profile picture",
            Success(
                200,
                "the new picture's URL",
                json_object({"avatar_url": {"type": "string"}}),
            ),
            {400: ("invalid_image",), 503: ("storage_unavailable",)},
            upload=RawUpload(
                ("image/png", "image/jpeg", "image/webp", "image/gif"),
                UPLOAD_FIELD,
                "a PNG, JPEG, WebP or GIF picture, as the body or as the multipart field `file`",
            ),
            needs_session=True,
            description="The picture is centre-cropped to 256x256 and stored as WebP.",
        )
    )
    async def put_avatar(self, request: Request) -> Response:
        """The picture as the multipart field `file`, or as the raw body."""
        session = await self._sessions.of_api_call(request)
        multipart = media_type_of(request) == MULTIPART_MEDIA_TYPE
        max_body = self._max_avatar_bytes + (MULTIPART_OVERHEAD_BYTES if multipart else 0)
        refuse_declared_oversize(request, max_body)
        with self._avatars.uploading(session):
            profile = await self._avatars.live_profile(session)  # a revoked session's: unread
            if multipart:
                form = await read_picture_form(request, self._max_avatar_bytes)
                upload = picture_from_form(form, self._max_avatar_bytes)
            else:
                upload = await read_body(request, self._max_avatar_bytes)
            user = await self._avatars.replace(session, upload, profile)
        return PrivateJSONResponse({"avatar_url": avatar_url(user)})

    # /open_api/v1

    @documented(
        Operation(
            "POST",
            "openRegister",
            "Sign up (partner API)",
            Success(
                200,
                "the new account",
                json_object({"id": {"type": "string"}, "username": {"type": "string"}}),
            ),
            SIGNUP_REFUSALS,
            json_body=SIGNUP_BODY,
            hashes_password=True,
            tag="partner",
        )
    )
    async def open_register(self, request: Request) -> Response:
        user = await self._register(request)
        return PrivateJSONResponse({"id": str(user.id), "username": user.username})

    @documented(
        Operation(
            "POST",
            "openAuthenticate",
            "Log in (partner API)",
            Success(200, "a session token", json_object({"token": {"type": "string"}})),
            {404: ("invalid_credentials",)},  # every credential failure, a locked account too
            json_body=LOGIN_BODY,
            hashes_password=True,
            tag="partner",
            description=SESSION_CAP,
        )
    )
    async def open_authenticate(self, request: Request) -> Response:
        # Its one credential-failure answer covers a locked account too (the partner contract).
        reply = await self._authenticate(request, no_matching_account)
        response = PrivateJSONResponse({"token": reply.token})
        self._set_device_cookie(response, reply)
        return response

    # shared steps

    async def _register(self, request: Request) -> pb.User:
        body = await read_json_object(request, self._max_body_bytes)
        return await self._accounts.register(
            required_string(body, "username"),
            required_string(body, "password"),
            optional_string(body, "nickname"),
            self._callers.of(request),
        )

    async def _authenticate(
        self,
        request: Request,
        failure: Callable[[], ApiError],
        *,
        locked: Callable[[], ApiError] | None = None,
    ) -> pb.AuthenticateReply:
        body = await read_json_object(request, self._max_body_bytes)
        return await self._accounts.log_in(
            required_string(body, "username"),
            required_string(body, "password"),
            failure,
            self._callers.of(request),
            locked=locked,
        )

    def _set_device_cookie(self, response: Response, reply: pb.AuthenticateReply) -> None:
        device_cookie = self._callers.device_set_cookie(reply)
        if device_cookie is not None:
            response.headers.append("set-cookie", device_cookie)
