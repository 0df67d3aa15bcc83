"""The web pages: sign up, log in, the profile (nickname, picture and password forms, the
sessions with a "Log out" for each and "Log out everywhere", the data download, and the
account's deletion), log out.

Server-rendered HTML that works without JavaScript: every action is a form POST answered by a
redirect (303) on success, or by the same page with the error beside the field that caused
it. The pages make the same calls as the JSON API (AccountCalls, Avatars) and authenticate
with the session cookie the API's login sets. Every form carries the CSRF token of the
session, or before a login the pre-session token (services.http.csrf); a POST without it gets
a 403 page, and one whose form cannot be read (too large, malformed) a 413 or 400 page. Cross-site POSTs never reach them (services.http.middleware.crosssite).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Message, Receive, Scope, Send

from services.contract import auth_pb2 as pb
from services.foundation.rpc.protocol import RpcError
from services.http import metrics
from services.http.avatars.keys import avatar_url
from services.http.avatars.replace import is_no_picture, picture_from_form, read_picture_form
from services.http.bodies import Form, read_form
from services.http.csrf import CSRF_FIELD
from services.http.endpoints import AccountEndpoints
from services.http.errors import FAILURES, ApiError, Failure, account_locked, as_api_error
from services.http.middleware.unread_body import answer_without_draining
from services.http.tokens import Session
from services.http.views import session_view

TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")
# No script runs on these pages; styles and pictures come from this origin only.
PAGE_CSP = (
    "default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    # Pages hold a CSRF token and personal data: never kept by shared caches or the back button.
    "Cache-Control": "no-store",
}
NOTICES = {
    "nickname": "Your nickname was changed.",
    "picture": "Your picture was updated.",
    "session": "That session was logged out.",
    "password": "Your password was changed. Your other sessions have ended.",
}
# Which form field an error code belongs beside; other errors are shown above the form.
_FIELD_OF_CODE = {
    "invalid_username": "username",
    "username_taken": "username",
    "invalid_password": "password",
    "invalid_credentials": "password",
    "invalid_nickname": "nickname",
}
# The fields of the password forms an error code belongs beside.
_CHANGE_PASSWORD_FIELDS = {
    "invalid_credentials": "current_password",
    "invalid_password": "new_password",
}
_DELETE_ACCOUNT_FIELDS = {"invalid_credentials": "password"}
_PICTURE_CODES = frozenset(
    {"invalid_image", "unsupported_media_type", "payload_too_large", "invalid_request"}
)
# The addresses that only forms post to (the pages that show a form's error are at these).
_FORM_ADDRESSES = (
    "/profile/nickname",
    "/profile/avatar",
    "/profile/password",
    "/profile/delete",
    "/profile/sessions/end",
    "/profile/sessions/end-all",
    "/logout",
)
# Failures to get the picture's request through at all (admission's 503 once its body arrived,
# a late body's 408): answered as they are, with their Retry-After or Connection: close, as
# every other form's are, not by rendering the profile page, which calls the auth service
# twice for a request that holds no admission slot.
_UNDELIVERED_CODES = frozenset({"overloaded", "request_timeout"})


def sentence(message: str) -> str:
    """An API message ("the username is taken; choose another") as a sentence for a page."""
    text = message[:1].upper() + message[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def page_time(rfc3339: str) -> str:
    """An API time ("2026-12-03T16:52:05Z") as a page shows it ("2026-12-03 16:52 UTC")."""
    return rfc3339[:16].replace("T", " ") + " UTC"


class Pages(AccountEndpoints):
    _templates = Jinja2Templates(directory=TEMPLATES_DIR)
    _templates.env.filters["page_time"] = page_time

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.home, methods=["GET"]),
            Route("/signup", self.signup, methods=["GET", "POST"]),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/profile", self.profile, methods=["GET"]),
            Route("/profile/nickname", self.change_nickname, methods=["POST"]),
            Route("/profile/avatar", self.change_picture, methods=["POST"]),
            Route("/profile/password", self.change_password, methods=["POST"]),
            Route("/profile/delete", self.delete_account, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/profile/sessions/end", self.end_session, methods=["POST"]),
            Route("/profile/sessions/end-all", self.end_all_sessions, methods=["POST"]),
            *(Route(path, self.form_address, methods=["GET"]) for path in _FORM_ADDRESSES),
            Mount("/static", WholeStaticFiles(directory=STATIC_DIR), name="static"),
        ]

    async def form_address(self, request: Request) -> Response:
        """A GET of a form's address: a form that failed leaves it in the address bar, where
        a reload by Enter, a bookmark or a shared link opens it. To the profile (the login
        page without a session); never an action, which only a POST with the token takes."""
        return _see_other("/profile")

    async def home(self, request: Request) -> Response:
        return _see_other("/profile" if (await self._sessions.of_page(request)) else "/login")

    async def signup(self, request: Request) -> Response:
        if request.method != "POST":  # GET, and HEAD (Starlette routes it with GET)
            return self._render(request, "signup.html", {"username": "", "nickname": ""})
        form = await self._form(
            request,
            await self._sessions.of_page(request),
            opened_before_a_login=lambda stale: self._opened_before_a_login(
                request,
                "signup.html",
                {
                    "username": stale.fields.get("username", ""),
                    "nickname": stale.fields.get("nickname", "").strip(),
                },
            ),
        )
        if isinstance(form, Response):
            return form
        username = form.fields.get("username", "")
        nickname = form.fields.get("nickname", "").strip()
        password = form.fields.get("password", "")
        typed = {"username": username, "nickname": nickname}
        caller = self._callers.of(request)
        try:
            await self._accounts.register(username, password, nickname or None, caller)
        except FAILURES as exc:
            return self._form_error(request, "signup.html", typed, exc)
        try:
            reply = await self._accounts.log_in(username, password, _wrong_credentials, caller)
        except FAILURES as exc:
            error = as_api_error(request, exc)
            context = {
                "username": username,
                "form_error": "Your account was created, but "
                f"logging in failed: {error.message}. Log in to continue.",
            }
            return self._render(
                request, "login.html", context, status=error.status_code, headers=error.headers
            )
        return await self._logged_in(reply)

    async def login(self, request: Request) -> Response:
        if request.method != "POST":  # GET, and HEAD (Starlette routes it with GET)
            return self._render(request, "login.html", {"username": ""})
        form = await self._form(
            request,
            await self._sessions.of_page(request),
            opened_before_a_login=lambda stale: self._opened_before_a_login(
                request, "login.html", {"username": stale.fields.get("username", "")}
            ),
        )
        if isinstance(form, Response):
            return form
        username = form.fields.get("username", "")
        try:
            reply = await self._accounts.log_in(
                username,
                form.fields.get("password", ""),
                _wrong_credentials,
                self._callers.of(request),
                locked=account_locked,
            )
        except FAILURES as exc:
            return self._form_error(request, "login.html", {"username": username}, exc)
        return await self._logged_in(reply)

    async def profile(self, request: Request) -> Response:
        session = await self._sessions.of_page(request)
        if session is None:
            return _see_other("/login")
        notice = NOTICES.get(request.query_params.get("saved", ""))
        return await self._profile_page(request, session, {"notice": notice})

    async def change_nickname(self, request: Request) -> Response:
        session = await self._sessions.of_page(request)
        if session is None:
            return _see_other("/login")
        form = await self._form(request, session)
        if isinstance(form, Response):
            return form
        nickname = form.fields.get("nickname", "")
        try:
            await self._accounts.change_nickname(session, nickname)
        except FAILURES as exc:
            error = as_api_error(request, exc)
            context = {"nickname": nickname, "errors": {"nickname": sentence(error.message)}}
            return await self._profile_page(
                request, session, context, status=error.status_code, headers=error.headers
            )
        return _see_other("/profile?saved=nickname")

    async def change_picture(self, request: Request) -> Response:
        session = await self._sessions.of_page(request)
        if session is None:
            return _see_other("/login")
        try:
            with self._avatars.uploading(session):
                profile = await self._avatars.live_profile(session)  # before the body is read
                form = await self._form(
                    request, session, lambda: read_picture_form(request, self._max_avatar_bytes)
                )
                if isinstance(form, Response):
                    return form
                picture = picture_from_form(form, self._max_avatar_bytes)
                await self._avatars.replace(session, picture, profile)
        except FAILURES as exc:
            error = as_api_error(request, exc)
            if error.code in _UNDELIVERED_CODES:
                raise error from None
            context: dict[str, Any] = (
                {"errors": {"file": self._picture_sentence(error)}}
                if error.code in _PICTURE_CODES
                else {"form_error": sentence(error.message)}
            )
            return await self._profile_page(
                request, session, context, status=error.status_code, headers=error.headers
            )
        return _see_other("/profile?saved=picture")

    def _picture_sentence(self, error: ApiError) -> str:
        """The picture form's error in the page's words: the API's messages speak of request
        bodies in bytes and of multipart fields, which a person choosing a file never sees."""
        if error.code == "payload_too_large":
            mib = self._max_avatar_bytes / (1024 * 1024)
            return f"The picture is larger than {mib:g} MiB. Choose a smaller one."
        if is_no_picture(error):  # no file chosen, an empty one, or no form at all
            return "Choose a picture to upload: a PNG, JPEG, WebP or GIF file that is not empty."
        return sentence(error.message)

    async def change_password(self, request: Request) -> Response:
        def change(session: Session, form: Form) -> Awaitable[None]:
            return self._lifecycle.change_password(
                session,
                form.fields.get("current_password", ""),
                form.fields.get("new_password", ""),
                self._callers.of(request),
            )

        return await self._password_form(
            request, change, _CHANGE_PASSWORD_FIELDS, lambda: _see_other("/profile?saved=password")
        )

    async def delete_account(self, request: Request) -> Response:
        def delete(session: Session, form: Form) -> Awaitable[None]:
            return self._lifecycle.delete_account(
                session, form.fields.get("password", ""), self._callers.of(request)
            )

        def deleted() -> Response:
            response = self._message(
                request,
                "Your account was deleted",
                "Your profile and picture are erased and every session has ended, on every device.",
                200,
            )
            for cookie in self._sessions.cleared_cookies():
                response.headers.append("set-cookie", cookie)
            return response

        return await self._password_form(request, delete, _DELETE_ACCOUNT_FIELDS, deleted)

    async def logout(self, request: Request) -> Response:
        posted = await self._session_form(request)
        if isinstance(posted, Response):
            return posted
        session, _ = posted
        try:
            await self._accounts.log_out(session)
        except RpcError as exc:
            if exc.status != pb.STATUS_UNAUTHENTICATED:  # else it had ended already
                error = as_api_error(request, exc)
                return self._message(
                    request,
                    "Could not log out",
                    sentence(error.message),
                    error.status_code,
                    headers=error.headers,
                )
        return self._signed_out()

    async def end_session(self, request: Request) -> Response:
        """The "Log out" button of one row of "Your sessions"."""
        return await self._end_sessions(request, one=True)

    async def end_all_sessions(self, request: Request) -> Response:
        """The "Log out everywhere" button: this browser's session ends too."""
        return await self._end_sessions(request, one=False)

    # shared steps

    async def _end_sessions(self, request: Request, *, one: bool) -> Response:
        posted = await self._session_form(request)
        if isinstance(posted, Response):
            return posted
        session, form = posted
        try:
            if one:
                ended_current = await self._own_sessions.end(
                    session, form.fields.get("session_id", "")
                )
            else:
                await self._own_sessions.end_all(session)
                ended_current = True
        except FAILURES as exc:
            error = as_api_error(request, exc)
            if error.status_code == 401:
                return self._signed_out()
            context = {"form_error": sentence(error.message)}
            return await self._profile_page(
                request, session, context, status=error.status_code, headers=error.headers
            )
        return self._signed_out() if ended_current else _see_other("/profile?saved=session")

    async def _session_form(self, request: Request) -> tuple[Session, Form] | Response:
        """The session and the form of a POST that acts on the session; else the answer: to the
        login page without a session, or the CSRF refusal."""
        session = await self._sessions.of_page(request)
        if session is None:
            # Nothing to end: the body is not even waited for, so this costs no wait on a client.
            answer_without_draining(request.scope)
            return self._signed_out()
        form = await self._form(request, session)
        if isinstance(form, Response):
            return form
        return session, form

    async def _form(
        self,
        request: Request,
        session: Session | None,
        read: Callable[[], Awaitable[Form]] | None = None,
        *,
        opened_before_a_login: Callable[[Form], Response] | None = None,
    ) -> Form | Response:
        """The POSTed form if it echoes the CSRF token of `session` (without one, the browser's
        pre-session token), else the CSRF refusal; when no token can match, the body is not
        even read. A small urlencoded form that cannot be read (over GATEHOUSE_MAX_BODY_BYTES,
        malformed) gets a page saying why, not the API's JSON error; a body that did not get
        through (late) is raised as it is. `read` reads the form another way, its failures
        raised to the caller. `opened_before_a_login` answers a form of the login or signup
        page that carries a pre-session token while the browser now holds a session: the
        page was opened before a login in another tab, no other site's doing."""
        csrf = self._sessions.csrf
        if csrf.expected(request, session) is None:
            return self._csrf_refused(request)
        if read is not None:
            form = await read()
        else:
            try:
                form = await read_form(request, self._max_body_bytes)
            except ApiError as exc:
                if exc.code in _UNDELIVERED_CODES:
                    raise
                return self._message(
                    request,
                    "Form not accepted",
                    sentence(exc.message),
                    exc.status_code,
                    headers=exc.headers,
                )
        echoed = form.fields.get(CSRF_FIELD)
        if not csrf.echo_matches(request, session, echoed):
            if (
                opened_before_a_login is not None
                and session is not None
                and csrf.is_pre_session(echoed or "")
            ):
                metrics.CSRF_REFUSALS.labels("token").inc()
                return opened_before_a_login(form)
            return self._csrf_refused(request)
        return form

    def _opened_before_a_login(
        self, request: Request, template: str, typed: dict[str, str]
    ) -> Response:
        """`template` again, with this session's token, what was typed and why (403: the form
        did nothing)."""
        context: dict[str, Any] = {
            **typed,
            "form_error": "You logged in from another tab or window after this page was "
            "opened, so this form had expired. Submit it again to continue.",
        }
        return self._render(request, template, context, status=403)

    async def _profile_page(
        self,
        request: Request,
        session: Session,
        context: dict[str, Any],
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        try:
            user = await self._accounts.profile(session)
        except FAILURES as exc:
            error = as_api_error(request, exc)
            if error.status_code == 401:
                return self._signed_out()
            if status >= 400:
                # The page was to show why its form failed. Its reads share what the form's
                # call left of the request's deadline (services.http.call_budget), none when
                # that call timed out: say what the form met, not that the reads failed.
                errors = context.get("errors", {})
                shown = context.get("form_error") or " ".join(errors.values())
                return self._message(
                    request, "Your request did not go through", shown, status, headers=headers
                )
            return self._message(
                request,
                "Your profile is unavailable",
                sentence(error.message),
                error.status_code,
                headers=error.headers,
            )
        full_context = {
            "user": user,
            "sessions": await self._listed_sessions(request, session),
            "avatar_url": avatar_url(user),
            "nickname": user.nickname,
            "max_avatar_mib": self._max_avatar_bytes / (1024 * 1024),
            **context,
        }
        return self._render(request, "profile.html", full_context, status=status, headers=headers)

    async def _password_form(
        self,
        request: Request,
        action: Callable[[Session, Form], Awaitable[None]],
        fields: Mapping[str, str],
        done: Callable[[], Response],
    ) -> Response:
        """A profile form that asks for the password: `action` with the session and the form it
        POSTed (with its CSRF token), then `done()`. On failure, the profile page with the error
        beside the field of `fields` it concerns; to the login page when the session has ended."""
        session = await self._sessions.of_page(request)
        if session is None:
            return _see_other("/login")
        form = await self._form(request, session)
        if isinstance(form, Response):
            return form
        try:
            await action(session, form)
        except FAILURES as exc:
            error = as_api_error(request, exc)
            if error.status_code == 401:
                return self._signed_out()
            field = fields.get(error.code)
            context: dict[str, Any] = (
                {"errors": {field: sentence(error.message)}}
                if field is not None
                else {"form_error": _form_sentence(error)}
            )
            return await self._profile_page(
                request, session, context, status=error.status_code, headers=error.headers
            )
        return done()

    async def _listed_sessions(
        self, request: Request, session: Session
    ) -> list[dict[str, Any]] | None:
        """ "Your sessions" as the page shows them; None when they cannot be read now (the
        rest of the page still shows)."""
        try:
            listed = await self._own_sessions.list(session)
        except FAILURES as exc:
            as_api_error(request, exc)  # logs what failed
            return None
        return [session_view(info) for info in listed]

    def _form_error(
        self, request: Request, template: str, typed: dict[str, str], exc: Failure
    ) -> Response:
        """`template` again with what was typed and the error beside its field."""
        error = as_api_error(request, exc)
        field = _FIELD_OF_CODE.get(error.code)
        context: dict[str, Any] = dict(typed)
        if field is None or error.code == "too_many_attempts":
            context["form_error"] = _form_sentence(error)
        else:
            context["errors"] = {field: sentence(error.message)}
        return self._render(
            request, template, context, status=error.status_code, headers=error.headers
        )

    async def _logged_in(self, reply: pb.AuthenticateReply) -> Response:
        response = _see_other("/profile")
        for cookie in await self._sessions.login_cookies(reply.token, reply.expires_at_ms):
            response.headers.append("set-cookie", cookie)
        device_cookie = self._callers.device_set_cookie(reply)
        if device_cookie is not None:
            response.headers.append("set-cookie", device_cookie)
        return response

    def _signed_out(self) -> Response:
        """To the login page, the session cookie cleared."""
        response = _see_other("/login")
        for cookie in self._sessions.cleared_cookies():
            response.headers.append("set-cookie", cookie)
        return response

    def _csrf_refused(self, request: Request) -> Response:
        metrics.CSRF_REFUSALS.labels("token").inc()
        return self._message(
            request,
            "Form refused",
            "This form was refused because it did not carry this site's security token "
            "(CSRF check failed). Reload the page and submit the form again; if you did not "
            "submit a form, another site tried to act on your behalf.",
            403,
        )

    def _message(
        self,
        request: Request,
        title: str,
        message: str,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        return self._render(
            request,
            "message.html",
            {"title": title, "message": message},
            status=status,
            headers=headers,
        )

    def _render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """`headers` (such as an error's Retry-After) are sent besides the page's own."""
        session = self._sessions.of_page_by_held_keys(request)
        token, new_cookie = self._sessions.csrf.page_token(request, session)
        response = self._templates.TemplateResponse(
            request,
            template,
            {"errors": {}, **context, "csrf_token": token, "csrf_field": CSRF_FIELD},
            status_code=status,
            headers={**PAGE_HEADERS, **(headers or {})},
        )
        if new_cookie is not None:
            response.headers.append("set-cookie", new_cookie)
        return response


def _form_sentence(error: ApiError) -> str:
    """An error shown above a form: how long to wait for the throttle's, else its message."""
    if error.code != "too_many_attempts":
        return sentence(error.message)
    seconds = (error.headers or {}).get("Retry-After", "")
    return (
        f"Too many attempts. Try again in {seconds} seconds."
        if seconds
        else sentence(error.message)
    )


def _wrong_credentials() -> ApiError:
    return ApiError(400, "invalid_credentials", "the username or password is wrong")


def _see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303)


class WholeStaticFiles(StaticFiles):
    """The stylesheet and icon, served whole whatever `Range` asks (RFC 9110 lets a server
    ignore it): Starlette answers a malformed range with a plain-text 400 and an unsatisfiable
    one with an empty 416, not the JSON error every other answer has, for files of a few KiB."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(name, value) for name, value in scope["headers"] if name != b"range"]

        async def send_without_ranges(message: Message) -> None:
            if message["type"] == "http.response.start":  # nor does it offer any
                kept = [(n, v) for n, v in message["headers"] if n != b"accept-ranges"]
                message = {**message, "headers": kept}
            await send(message)

        await super().__call__({**scope, "headers": headers}, receive, send_without_ranges)
