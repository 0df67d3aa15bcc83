"""Who is calling: the session token from `Authorization: Bearer` or the `session` cookie,
verified locally (services.http.tokens), and the session cookie itself.

The API takes either; a Bearer header wins over the cookie. A call authenticated by the
cookie alone with an unsafe method must also echo the CSRF token (services.http.csrf), since
a browser attaches the cookie to requests that other sites make. Pages take the cookie only.
"""

from __future__ import annotations

import time

from starlette.requests import Request

from services.contract import auth_pb2 as pb
from services.http import csrf
from services.http.cookies import set_cookie
from services.http.errors import ApiError, unauthenticated
from services.http.tokens import InvalidToken, Session, TokenVerifier

SESSION_COOKIE = "session"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NO_TOKEN = "send the session token as `Authorization: Bearer <token>` or the `session` cookie"


def csrf_failed() -> ApiError:
    return ApiError(
        403,
        "csrf_failed",
        "a call authenticated by the session cookie must send the `csrf` cookie's value in the "
        "X-CSRF-Token header (or authenticate with `Authorization: Bearer <token>`)",
    )


def session_ref(session: Session) -> pb.SessionRef:
    return pb.SessionRef(user_id=session.user_id, session_id=session.session_id)


class Sessions:
    def __init__(self, tokens: TokenVerifier, *, secure_cookie: bool) -> None:
        self._tokens = tokens
        self.secure_cookie = secure_cookie

    def of_api_call(self, request: Request) -> Session:
        """The caller's session, or ApiError: 401 without a valid token, 403 `csrf_failed`."""
        token = _bearer_token(request)
        if token is None:
            token = request.cookies.get(SESSION_COOKIE)
            if not token:
                raise unauthenticated(f"this call needs a session: {_NO_TOKEN}")
            if request.method in UNSAFE_METHODS and not csrf.header_matches(request):
                raise csrf_failed()
        try:
            return self._tokens.verify(token)
        except InvalidToken as exc:
            raise unauthenticated(f"the session token is not valid ({exc}); log in again") from None

    def of_page(self, request: Request) -> Session | None:
        """The session of the cookie if its token is valid (its liveness is the auth
        service's to say)."""
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        try:
            return self._tokens.verify(token)
        except InvalidToken:
            return None

    def cookie(self, token: str, expires_at_ms: int) -> str:
        """The Set-Cookie value that keeps `token` until it expires."""
        lifetime = max(0, round(expires_at_ms / 1000 - time.time()))
        return set_cookie(
            SESSION_COOKIE, token, secure=self.secure_cookie, http_only=True, max_age=lifetime
        )

    def cleared_cookie(self) -> str:
        return set_cookie(SESSION_COOKIE, "", secure=self.secure_cookie, http_only=True, max_age=0)


def _bearer_token(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and credentials:
            return credentials
    return None
