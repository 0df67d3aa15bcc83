"""Who is calling: the session token from `Authorization: Bearer` or the session cookie,
verified locally (services.http.tokens), and the session and CSRF cookies themselves.

The API takes either; a Bearer header wins over the cookie. A call authenticated by the
cookie alone with an unsafe method must also echo the session's CSRF token
(services.http.csrf), since a browser attaches the cookie to requests that other sites make.
Pages take the cookie only.

The session cookie is `session`, or `__Host-session` when cookies are Secure. Under Secure
cookies the old name `session` is still read (LEGACY_SESSION_COOKIE), so that nobody who
logged in before the upgrade to the `__Host-` names is logged out; a login or logout clears it.
"""

from __future__ import annotations

import time
from typing import Protocol

from starlette.requests import Request

from services.contract import auth_pb2 as pb
from services.http import metrics
from services.http.cookies import cookie_name, set_cookie
from services.http.csrf import CsrfTokens
from services.http.errors import RETRY_AFTER_SECONDS, ApiError, unauthenticated
from services.http.tokens import InvalidToken, Session, TokenVerifier, UnknownKeyId

SESSION_COOKIE = "session"
# Read under Secure cookies for one token lifetime after the upgrade to __Host- names; to be
# removed by a release whose notes say so (README, "Cookies").
LEGACY_SESSION_COOKIE = SESSION_COOKIE
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NO_TOKEN = "send the session token as `Authorization: Bearer <token>` or the session cookie"


def csrf_failed() -> ApiError:
    return ApiError(
        403,
        "csrf_failed",
        "a call authenticated by the session cookie must send the CSRF token (the value of "
        "the `csrf` cookie, `__Host-csrf` under HTTPS) in the X-CSRF-Token header, or "
        "authenticate with `Authorization: Bearer <token>`",
    )


class KeyRefresh(Protocol):
    """The published signing keys as services.http.signing_keys holds them."""

    @property
    def loaded(self) -> bool: ...

    async def refresh(self) -> None: ...


def keys_not_loaded() -> ApiError:
    return ApiError(
        503,
        "not_ready",
        "the token signing keys are not loaded yet; try again after the Retry-After delay",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def session_ref(session: Session) -> pb.SessionRef:
    return pb.SessionRef(user_id=session.user_id, session_id=session.session_id)


def session_cookie_names(*, secure: bool) -> tuple[str, ...]:
    """The names a session cookie is read from, the current one first."""
    current = cookie_name(SESSION_COOKIE, secure=secure)
    return (current, LEGACY_SESSION_COOKIE) if secure else (current,)


class Sessions:
    def __init__(
        self, tokens: TokenVerifier, keys: KeyRefresh, csrf: CsrfTokens, *, secure_cookie: bool
    ) -> None:
        self._tokens = tokens
        self._keys = keys
        self.csrf = csrf
        self.secure_cookie = secure_cookie
        self.cookie_name = cookie_name(SESSION_COOKIE, secure=secure_cookie)
        self._read_names = session_cookie_names(secure=secure_cookie)

    async def of_api_call(self, request: Request) -> Session:
        """The caller's session, or ApiError: 401 without a valid token, 403 `csrf_failed`,
        503 `not_ready` while the signing keys were never loaded."""
        token = _bearer_token(request)
        if token is not None:
            return await self._verify(token)
        token = self.cookie_token(request)
        if not token:
            raise unauthenticated(f"this call needs a session: {_NO_TOKEN}")
        session = await self._verify(token)
        if request.method in UNSAFE_METHODS and not self.csrf.header_matches(request, session):
            metrics.CSRF_REFUSALS.labels("token").inc()
            raise csrf_failed()
        return session

    async def of_page(self, request: Request) -> Session | None:
        """The session of the cookie if its token is valid (its liveness is the auth
        service's to say); ApiError 503 while the signing keys were never loaded."""
        token = self.cookie_token(request)
        if not token:
            return None
        try:
            return await self.verified(token)
        except InvalidToken:
            return None

    def of_page_by_held_keys(self, request: Request) -> Session | None:
        """As of_page, by the keys held now, without reading them again: for what a page
        shows after its handler called of_page."""
        token = self.cookie_token(request)
        if not token:
            return None
        try:
            return self._tokens.verify(token)
        except InvalidToken:
            return None

    async def verified(self, token: str) -> Session:
        """The session of `token`, or InvalidToken. A key id that no known key has makes the
        keys be read from etcd once more first (at most once a second: SigningKeys); while
        they were never read, ApiError 503 rather than a refusal of a token that may be good."""
        try:
            return self._tokens.verify(token)
        except UnknownKeyId:
            await self._keys.refresh()
            if not self._keys.loaded:
                raise keys_not_loaded() from None
        return self._tokens.verify(token)

    def cookie_token(self, request: Request) -> str | None:
        """The session cookie's token. Under Secure cookies the old name is read only for a
        token issued before the upgrade: a newer one there was planted (a sibling subdomain
        can set `session`, never `__Host-session`)."""
        token = request.cookies.get(self.cookie_name)
        if token:
            return token
        if self.cookie_name == LEGACY_SESSION_COOKIE:
            return None
        legacy = request.cookies.get(LEGACY_SESSION_COOKIE)
        if legacy and self._issued_before_claims(legacy):
            return legacy
        return None

    def _issued_before_claims(self, token: str) -> bool:
        # Such a token is older than any key a moment old: the held keys decide.
        try:
            return self._tokens.verify(token).issued_before_claims
        except InvalidToken:
            return False

    async def login_cookies(self, token: str, expires_at_ms: int) -> list[str]:
        """The Set-Cookie values of a login: the session cookie that keeps `token` until it
        expires, and the new session's CSRF token (unless `token` cannot be verified here)."""
        lifetime = max(0, round(expires_at_ms / 1000 - time.time()))
        cookies = [
            set_cookie(
                self.cookie_name, token, secure=self.secure_cookie, http_only=True, max_age=lifetime
            ),
            *self._cleared(self._read_names[1:]),
        ]
        try:
            session = await self.verified(token)
        except (InvalidToken, ApiError):
            return cookies  # the pages then see no session, and keep the pre-session token
        cookies.append(self.csrf.cookie(self.csrf.of_session(session.session_id)))
        return cookies

    def cleared_cookies(self) -> list[str]:
        """The Set-Cookie values that end the session cookie, under every name it is read."""
        return self._cleared(self._read_names)

    def _cleared(self, names: tuple[str, ...]) -> list[str]:
        return [
            set_cookie(name, "", secure=self.secure_cookie, http_only=True, max_age=0)
            for name in names
        ]

    async def _verify(self, token: str) -> Session:
        try:
            return await self.verified(token)
        except InvalidToken as exc:
            raise unauthenticated(f"the session token is not valid ({exc}); log in again") from None


def _bearer_token(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and credentials:
            return credentials
    return None
