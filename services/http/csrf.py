"""CSRF protection by double submit: a random token in the `csrf` cookie, echoed by the request.

Every page sets the cookie when the browser lacks one, so /login and /signup carry a token
before any session exists. A form sends it back in the hidden field `csrf_token`; a script
calling the API with the session cookie sends it in the `X-CSRF-Token` header. Another site
can make a browser send the cookie but can neither read it nor set the header, so a request
whose echo matches the cookie comes from this site's own pages. The cookie is not HttpOnly:
scripts of this site may read it to set the header.
"""

from __future__ import annotations

import hmac
import re
import secrets

from starlette.requests import Request

from services.http.cookies import set_cookie

CSRF_COOKIE = "csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_WELL_FORMED = re.compile(r"[A-Za-z0-9_-]{16,128}")


def page_token(request: Request, *, secure_cookie: bool) -> tuple[str, str | None]:
    """The token to put in a page's forms, and the Set-Cookie value when the browser needs
    a new one (none yet, or a malformed one)."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if _WELL_FORMED.fullmatch(current):
        return current, None
    return new_token(secure_cookie=secure_cookie)


def new_token(*, secure_cookie: bool) -> tuple[str, str]:
    """A fresh token and the Set-Cookie value that gives it to the browser. Logging in takes
    a fresh one, so a token planted before the login is worth nothing after it."""
    token = secrets.token_urlsafe(32)
    return token, set_cookie(CSRF_COOKIE, token, secure=secure_cookie, http_only=False)


def echo_matches(request: Request, echoed: str | None) -> bool:
    """Whether `echoed` (a form field or a header) is the token in the request's cookie."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not echoed:
        return False
    return hmac.compare_digest(cookie.encode(), echoed.encode())


def header_matches(request: Request) -> bool:
    return echo_matches(request, request.headers.get(CSRF_HEADER))
