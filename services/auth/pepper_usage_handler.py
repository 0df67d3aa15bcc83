"""AdminPepperUsage: password hashes per pepper version, for `gatehouse keys peppers` (the
pepper rotation procedure in the README: drop an old pepper only once no hash uses it)."""

from __future__ import annotations

from typing import Any

from services.auth.handlers import _route
from services.auth.store.database import Database
from services.auth.store.pepper_usage import pepper_usage
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.rpc.routes import Route


class PepperUsageHandler:
    def __init__(self, primary: Database) -> None:
        self._primary = primary

    def routes(self) -> list[Route[Any, Any]]:
        return [_route(methods.ADMIN_PEPPER_USAGE, self.pepper_usage)]

    async def pepper_usage(
        self, request: pb.AdminPepperUsageRequest, deadline: float
    ) -> pb.AdminPepperUsageReply:
        usage = await pepper_usage(self._primary, deadline)
        return pb.AdminPepperUsageReply(
            usage=[
                pb.PepperUsage(version=version, hashes=hashes)
                for version, hashes in sorted(usage.items())
            ]
        )
