"""Each RPC method of the contract bound to the code that serves it.

A route decodes the request, runs its handler and encodes the reply: the one place where the
auth service turns payload bytes into messages and back. Handlers take and return messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias

from google.protobuf.message import DecodeError

from services.contract import auth_pb2 as pb
from services.contract.method import Method, ReplyT, RequestT
from services.foundation.rpc.protocol import RpcError

# A handler gets the request and the call's deadline (loop time) and returns the reply, or
# raises RpcError.
Handler: TypeAlias = Callable[[RequestT, float], Awaitable[ReplyT]]


@dataclass(frozen=True)
class Route(Generic[RequestT, ReplyT]):
    method: Method[RequestT, ReplyT]
    handler: Handler[RequestT, ReplyT]

    async def serve(self, payload: bytes, deadline: float) -> bytes:
        """The reply payload to a request payload; raises RpcError."""
        reply = await self.handler(self._decode(payload), deadline)
        return reply.SerializeToString()

    def _decode(self, payload: bytes) -> RequestT:
        request_type = self.method.request_type
        try:
            return request_type.FromString(payload)
        except DecodeError as exc:
            raise RpcError(
                pb.STATUS_INVALID,
                f"payload is not a {request_type.__name__}: {exc}",
                "invalid_request",
            ) from exc


def by_number(routes: Iterable[Route[Any, Any]]) -> dict[int, Route[Any, Any]]:
    """The routes keyed by the method number their calls carry; one route per method."""
    table: dict[int, Route[Any, Any]] = {}
    for route in routes:
        if route.method.number in table:
            raise ValueError(f"method {route.method.name} has two routes")
        table[route.method.number] = route
    return table
