"""A person's own sessions (protocol 3): list them, end one, end all, and export the account.

Each call first checks that the session it is made with is live, as GetProfile does (so it
also counts as a use of that session); UNAUTHENTICATED when it is not. Ending sessions goes
through the one revocation path (AccountStore.revoke_session: the MySQL row, then the Redis
tombstone or the pending flag), so it holds across replicas and through Redis outages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.auth.accounts import (
    LISTED_SESSIONS,
    MAX_SESSIONS_PER_USER,
    AccountStore,
    SessionRecord,
    UserRecord,
)
from services.auth.handlers import _route, user_message
from services.auth.password_checks import session_ended
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.rpc.protocol import RpcError
from services.foundation.rpc.routes import Route


def session_not_found() -> RpcError:
    return RpcError(
        pb.STATUS_NOT_FOUND,
        "no live session of yours has this id (unknown, already ended, or not yours)",
        "session_not_found",
    )


def epoch_ms(moment: datetime | None) -> int:
    return 0 if moment is None else int(moment.timestamp() * 1000)


def session_info(record: SessionRecord, current_session_id: str) -> pb.SessionInfo:
    return pb.SessionInfo(
        id=record.id,
        created_at_ms=epoch_ms(record.created_at),
        expires_at_ms=epoch_ms(record.expires_at),
        last_seen_at_ms=epoch_ms(record.last_seen_at),
        user_agent=record.user_agent or "",
        ip=record.ip or "",
        current=record.id == current_session_id,
    )


class SessionHandlers:
    def __init__(self, store: AccountStore) -> None:
        self._store = store

    def routes(self) -> list[Route[Any, Any]]:
        return [
            _route(methods.LIST_SESSIONS, self.list_sessions),
            _route(methods.END_SESSION, self.end_session),
            _route(methods.END_ALL_SESSIONS, self.end_all_sessions),
            _route(methods.EXPORT_ACCOUNT, self.export_account),
        ]

    async def list_sessions(
        self, request: pb.ListSessionsRequest, deadline: float
    ) -> pb.ListSessionsReply:
        await self._caller(request.session)
        return pb.ListSessionsReply(sessions=await self._sessions(request.session))

    async def end_session(
        self, request: pb.EndSessionRequest, deadline: float
    ) -> pb.EndSessionReply:
        await self._caller(request.session)
        if not await self._store.end_session(
            request.session.user_id, request.id, not_after=deadline
        ):
            raise session_not_found()
        return pb.EndSessionReply(was_current=request.id == request.session.session_id)

    async def end_all_sessions(
        self, request: pb.EndAllSessionsRequest, deadline: float
    ) -> pb.EndAllSessionsReply:
        await self._caller(request.session)
        ended = await self._store.end_sessions(request.session.user_id, not_after=deadline)
        return pb.EndAllSessionsReply(ended=ended)

    async def export_account(
        self, request: pb.ExportAccountRequest, deadline: float
    ) -> pb.ExportAccountReply:
        user = await self._caller(request.session)
        sessions = await self._sessions(request.session, limit=MAX_SESSIONS_PER_USER)
        return pb.ExportAccountReply(user=user_message(user), sessions=within_bytes(sessions))

    async def _caller(self, session: pb.SessionRef) -> UserRecord:
        user = await self._store.session_profile(session.user_id, session.session_id)
        if user is None:
            raise session_ended()
        return user

    async def _sessions(
        self, session: pb.SessionRef, *, limit: int = LISTED_SESSIONS
    ) -> list[pb.SessionInfo]:
        records = await self._store.live_sessions(session.user_id, limit=limit)
        return [session_info(record, session.session_id) for record in records]


# An export's sessions, newest first, up to this many bytes: 1,000 sessions of 256-character
# user agents of 4-byte characters would pass the RPC frame limit (1 MiB by default), and a
# reply over the caller's limit fails its whole connection, the other users' calls on it too.
EXPORT_SESSION_BYTES = 256 * 1024


def within_bytes(sessions: list[pb.SessionInfo]) -> list[pb.SessionInfo]:
    """The newest of `sessions` that fit in EXPORT_SESSION_BYTES (ordinary ones, about 250
    bytes each, all fit)."""
    kept, size = [], 0
    for info in sessions:
        size += info.ByteSize() + 4  # the field's tag and length
        if size > EXPORT_SESSION_BYTES:
            break
        kept.append(info)
    return kept
