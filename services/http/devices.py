"""The device cookie on the HTTP side: carried, never judged. The auth service mints it at
each login and checks it at the next (services/auth/devices.py); here it is only read from the
request and set on the response.

Named `__Host-device` when cookies are Secure (the prefix binds it to this host, over HTTPS,
on Path=/), `device` otherwise; HttpOnly and SameSite=Strict, since only a login form or call
of this site ever needs it.
"""

from __future__ import annotations

import time

from starlette.requests import Request

from services.http.cookies import set_cookie

SECURE_NAME = "__Host-device"
PLAIN_NAME = "device"
# The auth service's cookies are far shorter; a longer value is not one of them.
MAX_COOKIE_LENGTH = 128


class DeviceCookie:
    def __init__(self, *, secure_cookie: bool) -> None:
        self._secure = secure_cookie
        self.name = SECURE_NAME if secure_cookie else PLAIN_NAME

    def of(self, request: Request) -> str:
        """The request's device cookie, or "" when it has none (or an oversized one)."""
        value = request.cookies.get(self.name, "")
        return value if len(value) <= MAX_COOKIE_LENGTH else ""

    def set_cookie(self, value: str, expires_at_ms: int) -> str | None:
        """The Set-Cookie value for a cookie the auth service minted; None when it sent none
        (an auth service older than the login throttle)."""
        if not value:
            return None
        lifetime = max(0, round(expires_at_ms / 1000 - time.time()))
        return set_cookie(
            self.name,
            value,
            secure=self._secure,
            http_only=True,
            max_age=lifetime,
            same_site="Strict",
        )
