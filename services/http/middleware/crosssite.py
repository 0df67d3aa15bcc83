"""Refuse cross-site requests that set or use the session cookie: 403 `csrf_failed`.

Judged: every unsafe request (POST, PUT, PATCH, DELETE) that carries a session cookie, and
the requests that create one however they are authenticated: logins and signups, by the API
and by the forms (SESSION_ENTRY_PATHS). A judged request is refused when

- `Sec-Fetch-Site` is `cross-site` (the browser says another site made it), or
- `Origin` is present and is not an allowed origin: GATEHOUSE_ALLOWED_ORIGINS, or when that is
  empty the request's own origin (its Host header with the scheme the client used). `Origin:
  null` (sandboxed frames, privacy redirects) is never allowed.

A request with neither header (API clients, curl, old browsers) is judged by the other rules
alone: the CSRF token (services.http.csrf) and the JSON Content-Type. Safe methods are never
refused: links from other sites to the pages must keep working.

This is the login CSRF defence: before a session exists there is no session to bind a token
to, and another site could otherwise log a visitor into the attacker's account. The check
runs before any body is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from services.foundation.log_throttle import RepeatedWarnings
from services.http import metrics
from services.http.errors import ApiError, error_response
from services.http.origins import normalize_origin, own_origin, request_scheme
from services.http.sessions import UNSAFE_METHODS, session_cookie_names

log = logging.getLogger(__name__)

# The requests that set the session cookie (or create the account that a form then logs in).
SESSION_ENTRY_PATHS = frozenset({"/api/v1/sessions", "/api/v1/users", "/login", "/signup"})
LOG_INTERVAL_SECONDS = 60.0

# What a trusted proxy says about the scheme the client used; None: it says nothing.
ForwardedHttps = Callable[[Scope], bool | None]


def no_forwarded_scheme(scope: Scope) -> bool | None:
    return None


def cross_site_refused() -> ApiError:
    return ApiError(
        403,
        "csrf_failed",
        "this request comes from another site (Sec-Fetch-Site or Origin), and logins, signups "
        "and calls with the session cookie are accepted only from this site's own pages",
    )


class CrossSiteGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_origins: tuple[str, ...],
        cookie_secure: bool,
        forwarded_https: ForwardedHttps = no_forwarded_scheme,
    ) -> None:
        self.app = app
        self._allowed = frozenset(allowed_origins)
        self._cookie_secure = cookie_secure
        self._forwarded_https = forwarded_https
        self._session_cookies = session_cookie_names(secure=cookie_secure)
        self._refusals = RepeatedWarnings(log, LOG_INTERVAL_SECONDS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS and self._judged(scope):
            reason = self._refusal(scope)
            if reason is not None:
                self._count(scope, reason)
                await error_response(cross_site_refused())(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _judged(self, scope: Scope) -> bool:
        if scope["path"] in SESSION_ENTRY_PATHS:
            return True
        for name, value in scope["headers"]:
            if name == b"cookie":
                cookies = cookie_parser(value.decode("latin-1"))
                if any(cookies.get(cookie) for cookie in self._session_cookies):
                    return True
        return False

    def _refusal(self, scope: Scope) -> str | None:
        """Why the request is refused ("cross_site", "origin"), or None."""
        origins: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"sec-fetch-site" and value.strip().lower() == b"cross-site":
                return "cross_site"
            if name == b"origin":
                origins.append(value)
        if not origins:
            return None
        if len(origins) > 1:
            return "origin"
        origin = normalize_origin(origins[0].decode("latin-1").strip())
        if origin is None or origin not in self._allowed_for(scope):
            return "origin"
        return None

    def _allowed_for(self, scope: Scope) -> frozenset[str]:
        if self._allowed:
            return self._allowed
        scheme = request_scheme(
            scope, cookie_secure=self._cookie_secure, forwarded_https=self._forwarded_https(scope)
        )
        own = own_origin(scope, scheme)
        return frozenset() if own is None else frozenset((own,))

    def _count(self, scope: Scope, reason: str) -> None:
        metrics.CSRF_REFUSALS.labels(reason).inc()
        self._refusals.warn(
            "refused",
            "refused a cross-site %s %s (%s)",
            scope["method"],
            scope["path"],
            reason,
            level=logging.INFO,
        )
