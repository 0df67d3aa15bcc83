"""JSON shapes of the API's answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.contract import auth_pb2 as pb
from services.http.avatars.keys import avatar_url


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
