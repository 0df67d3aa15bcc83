"""The JSON API of a person's own sessions and data (issue 14):

    GET    /api/v1/sessions        the caller's live sessions, newest first (at most 100)
    DELETE /api/v1/sessions/{id}   end one; ending the calling one clears the cookie
    DELETE /api/v1/sessions        end every session of the caller, the calling one too
    GET    /api/v1/me/export       the account as a JSON download

Authentication and CSRF as every API call (services.http.sessions): a Bearer token, or the
session cookie and, on DELETE, the X-CSRF-Token header. `DELETE /api/v1/sessions/current`
keeps its meaning (services.http.api); "current" is never a session id.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.http.avatars.export import picture_export
from services.http.endpoints import AccountEndpoints
from services.http.openapi.declare import Operation, Success, documented, json_object
from services.http.views import (
    EXPORTED_USER,
    SESSION,
    PrivateJSONResponse,
    exported_user_view,
    session_view,
)

CURRENT = "current"
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_SESSIONS = json_object({"sessions": {"type": "array", "items": SESSION, "maxItems": 100}})
_PICTURE = json_object(
    {
        "url": {"type": "string"},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "bytes": {"type": "integer", "minimum": 0},
    }
)
_EXPORT = json_object(
    {
        "user": EXPORTED_USER,
        "sessions": {"type": "array", "items": SESSION},
        "avatar": {"oneOf": [_PICTURE, {"type": "null"}], "description": "null: no picture"},
    }
)


def export_filename(username: str) -> str:
    return f"gatehouse-{_FILENAME_UNSAFE.sub('_', username)}.json"


class SessionApi(AccountEndpoints):
    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/sessions", self.list_sessions, methods=["GET"]),
            Route("/api/v1/sessions", self.end_all_sessions, methods=["DELETE"]),
            Route("/api/v1/sessions/{id}", self.end_session, methods=["DELETE"]),
            Route("/api/v1/me/export", self.export, methods=["GET"]),
        ]

    @documented(
        Operation(
            "GET",
            "listSessions",
            "The caller's live sessions",
            Success(200, "newest first, at most the 100 newest", _SESSIONS),
            needs_session=True,
            tag="sessions",
        )
    )
    async def list_sessions(self, request: Request) -> Response:
        session = await self._sessions.of_api_call(request)
        listed = await self._own_sessions.list(session)
        return PrivateJSONResponse({"sessions": [session_view(info) for info in listed]})

    @documented(
        Operation(
            "DELETE",
            "endSession",
            "End one of the caller's sessions",
            Success(204, "ended; ending the calling session clears the session cookie"),
            {404: ("session_not_found",)},  # unknown, malformed, ended or someone else's
            path_parameters={
                "id": {
                    "type": "string",
                    # The router decodes %2F before matching: an id with a slash names no route.
                    "pattern": "^[^/]+$",
                    "description": "a session id of GET /api/v1/sessions, or `current`",
                }
            },
            needs_session=True,
            tag="sessions",
        )
    )
    async def end_session(self, request: Request) -> Response:
        session = await self._sessions.of_api_call(request)
        session_id = request.path_params["id"]
        if session_id == CURRENT:
            await self._accounts.log_out(session)
            ended_current = True
        else:
            ended_current = await self._own_sessions.end(session, session_id)
        return self._no_content(clear_cookie=ended_current)

    @documented(
        Operation(
            "DELETE",
            "endAllSessions",
            "End every session of the caller, the calling one too",
            Success(204, "ended; the session cookie is cleared"),
            needs_session=True,
            tag="sessions",
        )
    )
    async def end_all_sessions(self, request: Request) -> Response:
        session = await self._sessions.of_api_call(request)
        await self._own_sessions.end_all(session)
        return self._no_content(clear_cookie=True)

    @documented(
        Operation(
            "GET",
            "exportAccount",
            "The account as a JSON download",
            Success(
                200,
                "the account, with every live session (where the list stops at the 100"
                " newest): never a password hash, pepper version or token",
                _EXPORT,
                {"Content-Disposition": 'attachment; filename="gatehouse-<username>.json"'},
            ),
            {503: ("storage_unavailable",)},
            needs_session=True,
        )
    )
    async def export(self, request: Request) -> Response:
        session = await self._sessions.of_api_call(request)
        exported = await self._own_sessions.export(session)
        body = {
            "user": exported_user_view(exported.user),
            "sessions": [session_view(info) for info in exported.sessions],
            "avatar": await picture_export(self._avatars.store, exported.user),
        }
        filename = export_filename(exported.user.username)
        return PrivateJSONResponse(
            body,
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
            },
        )

    def _no_content(self, *, clear_cookie: bool) -> Response:
        response = Response(status_code=204)
        if clear_cookie:
            for cookie in self._sessions.cleared_cookies():
                response.headers.append("set-cookie", cookie)
        return response
