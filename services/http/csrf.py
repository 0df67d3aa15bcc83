"""CSRF tokens bound to the session: HMAC(GATEHOUSE_CSRF_SECRET, session id).

A browser with a session holds the token of that session in the `csrf` cookie (`__Host-csrf`
under HTTPS); before any session exists (the /login and /signup forms) it holds a pre-session
token, `<nonce>.<HMAC(secret, nonce)>`. Forms send the token back in the hidden field
`csrf_token`; a script calling the API with the session cookie sends it in the
`X-CSRF-Token` header. The server never trusts the cookie's value as such: the token it
expects is computed from the session, or, without one, is a pre-session token that verifies
under the secret. So a planted cookie (`csrf=x`) is worth nothing, and the token of one session
is worthless with another one. The cookie is not HttpOnly: the site's own scripts read it to
set the header.

Logging in changes the token: the session's own token replaces the pre-session one, so a
token seen before the login (or planted) does not work after it. The cross-site refusal of
logins themselves is services.http.middleware.crosssite's job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from starlette.requests import Request

from services.http.cookies import cookie_name, set_cookie
from services.http.tokens import Session

CSRF_COOKIE = "csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
NONCE_BYTES = 16
# A token is 43 characters (session) or 66 (pre-session); anything longer is not one.
MAX_TOKEN_CHARS = 128

_SESSION_PURPOSE = b"gatehouse csrf session\x00"
_PRE_SESSION_PURPOSE = b"gatehouse csrf pre-session\x00"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class CsrfTokens:
    def __init__(self, secret: str, *, secure_cookie: bool) -> None:
        self._key = secret.encode("utf-8")
        self.secure_cookie = secure_cookie
        self.cookie_name = cookie_name(CSRF_COOKIE, secure=secure_cookie)

    def of_session(self, session_id: str) -> str:
        return self._mac(_SESSION_PURPOSE, session_id)

    def new_pre_session(self) -> str:
        nonce = _b64(secrets.token_bytes(NONCE_BYTES))
        return f"{nonce}.{self._mac(_PRE_SESSION_PURPOSE, nonce)}"

    def is_pre_session(self, token: str) -> bool:
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            return False
        nonce, dot, mac = token.partition(".")
        if not (dot and nonce and mac):
            return False
        return hmac.compare_digest(mac, self._mac(_PRE_SESSION_PURPOSE, nonce))

    def expected(self, request: Request, session: Session | None) -> str | None:
        """The token a request must echo: its session's, or without a session the pre-session
        token of its cookie; None when it has neither (nothing can match)."""
        if session is not None:
            return self.of_session(session.session_id)
        cookie = request.cookies.get(self.cookie_name, "")
        return cookie if self.is_pre_session(cookie) else None

    def echo_matches(self, request: Request, session: Session | None, echoed: str | None) -> bool:
        """Whether `echoed` (a form field or a header) is the token the request must carry."""
        expected = self.expected(request, session)
        if expected is None or not echoed or len(echoed) > MAX_TOKEN_CHARS:
            return False
        return hmac.compare_digest(expected.encode(), echoed.encode("utf-8", "replace"))

    def header_matches(self, request: Request, session: Session | None) -> bool:
        return self.echo_matches(request, session, request.headers.get(CSRF_HEADER))

    def page_token(self, request: Request, session: Session | None) -> tuple[str, str | None]:
        """The token to put in a page's forms, and the Set-Cookie value when the browser's
        cookie does not hold it yet (none, planted, another session's, or pre-session)."""
        token = self.expected(request, session) or self.new_pre_session()
        if request.cookies.get(self.cookie_name) == token:
            return token, None
        return token, self.cookie(token)

    def cookie(self, token: str) -> str:
        return set_cookie(self.cookie_name, token, secure=self.secure_cookie, http_only=False)

    def _mac(self, purpose: bytes, value: str) -> str:
        digest = hmac.new(self._key, purpose + value.encode("utf-8"), hashlib.sha256).digest()
        return _b64(digest)
