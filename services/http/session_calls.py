"""The calls on a person's own sessions and data (protocol 3), which the JSON API and the
pages share: list the sessions, end one, end all, export the account.

Failures raise RpcError (services.http.errors turns it into an ApiError): 401 when the calling
session has ended, 404 `session_not_found` for an id that names no live session of the caller,
503 `unavailable` at once while no auth replica speaks protocol 3 (services.http.auth_client).
"""

from __future__ import annotations

import re

from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.http.auth_client import AuthClient
from services.http.sessions import session_ref
from services.http.tokens import Session

# What a session id can look like (services/auth/tokens.py: 22 URL-safe characters; the column
# holds 64). Anything else is sent as "", which the auth service answers as an unknown id, so
# that a malformed id gets the very answer an unknown one gets, after the same session check.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def wire_session_id(raw: str) -> str:
    return raw if _SESSION_ID.fullmatch(raw) else ""


class SessionCalls:
    def __init__(self, auth: AuthClient) -> None:
        self._auth = auth

    async def list(self, session: Session) -> list[pb.SessionInfo]:
        reply = await self._auth.call(
            methods.LIST_SESSIONS, pb.ListSessionsRequest(session=session_ref(session))
        )
        return list(reply.sessions)

    async def end(self, session: Session, session_id: str) -> bool:
        """End one of the caller's sessions; whether it was the calling one."""
        reply = await self._auth.call(
            methods.END_SESSION,
            pb.EndSessionRequest(session=session_ref(session), id=wire_session_id(session_id)),
        )
        return reply.was_current

    async def end_all(self, session: Session) -> None:
        await self._auth.call(
            methods.END_ALL_SESSIONS, pb.EndAllSessionsRequest(session=session_ref(session))
        )

    async def export(self, session: Session) -> pb.ExportAccountReply:
        return await self._auth.call(
            methods.EXPORT_ACCOUNT, pb.ExportAccountRequest(session=session_ref(session))
        )
