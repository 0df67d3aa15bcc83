"""JSON shapes of the API's answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse

from services.contract import auth_pb2 as pb
from services.http.avatars.keys import avatar_url
from services.http.openapi.declare import component

NO_STORE = {"Cache-Control": "no-store"}


class PrivateJSONResponse(JSONResponse):
    """An answer about a user, their sessions or a token: never kept by a browser's or a
    proxy's cache, where it would outlive the logout on a shared computer."""

    def __init__(
        self, content: Any, status_code: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(content, status_code, {**NO_STORE, **(headers or {})})


_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339 UTC, to the second"}
_USER_PROPERTIES = {
    "id": {"type": "string", "pattern": "^[0-9]+$", "description": "a 64-bit integer"},
    "username": {"type": "string"},
    "nickname": {"type": "string"},
    "avatar_url": {"type": "string", "description": "the picture, or a drawn identicon"},
}
USER = component(
    "User",
    {"type": "object", "properties": _USER_PROPERTIES, "required": list(_USER_PROPERTIES)},
)
_SESSION_PROPERTIES = {
    "id": {"type": "string"},
    "created_at": _TIME,
    "expires_at": _TIME,
    "last_seen_at": {**_TIME, "type": ["string", "null"], "description": "null: not used yet"},
    "user_agent": {"type": ["string", "null"]},
    "ip": {"type": ["string", "null"]},
    "current": {"type": "boolean", "description": "the session of this call"},
}
SESSION = component(
    "Session",
    {"type": "object", "properties": _SESSION_PROPERTIES, "required": list(_SESSION_PROPERTIES)},
)
_EXPORTED_USER_PROPERTIES = {**_USER_PROPERTIES, "created_at": _TIME, "updated_at": _TIME}
EXPORTED_USER = component(
    "ExportedUser",
    {
        "type": "object",
        "properties": _EXPORTED_USER_PROPERTIES,
        "required": list(_EXPORTED_USER_PROPERTIES),
    },
)


def rfc3339_utc(epoch_ms: int) -> str:
    """`epoch_ms` as RFC 3339 UTC with a `Z`, to the second."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def user_view(user: pb.User) -> dict[str, Any]:
    return {
        "id": str(user.id),  # a string: 64-bit ids lose precision as JSON numbers in browsers
        "username": user.username,
        "nickname": user.nickname,
        "avatar_url": avatar_url(user),
    }


def optional_rfc3339_utc(epoch_ms: int) -> str | None:
    """As rfc3339_utc; None for 0 (not recorded)."""
    return rfc3339_utc(epoch_ms) if epoch_ms else None


def session_view(session: pb.SessionInfo) -> dict[str, Any]:
    return {
        "id": session.id,
        "created_at": rfc3339_utc(session.created_at_ms),
        "expires_at": rfc3339_utc(session.expires_at_ms),
        "last_seen_at": optional_rfc3339_utc(session.last_seen_at_ms),
        "user_agent": session.user_agent or None,  # None: not recorded
        "ip": session.ip or None,
        "current": session.current,
    }


def exported_user_view(user: pb.User) -> dict[str, Any]:
    """The profile as an account export shows it: `user_view` and when it was made and changed."""
    return {
        **user_view(user),
        "created_at": rfc3339_utc(user.created_at_ms),
        "updated_at": rfc3339_utc(user.updated_at_ms),
    }
