"""Operator calls (protocol 4) for the `gatehouse` CLI: show, lock, unlock and delete an
account, list and end its sessions, and count password hashes per pepper version.

Accounts are named by username; the calls need no session.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from services.auth.handlers import _route
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.rpc.protocol import RpcError
from services.foundation.rpc.routes import Route


class AdminHandlers:
    def routes(self) -> list[Route[Any, Any]]:
        return [
            _route(method, self.not_built_yet)
            for method in (
                methods.ADMIN_SHOW_USER,
                methods.ADMIN_LOCK_USER,
                methods.ADMIN_UNLOCK_USER,
                methods.ADMIN_DELETE_USER,
                methods.ADMIN_LIST_SESSIONS,
                methods.ADMIN_END_SESSIONS,
            )
        ]

    async def not_built_yet(self, request: Message, deadline: float) -> Message:
        raise RpcError(pb.STATUS_UNIMPLEMENTED, "operator calls are not built yet")
