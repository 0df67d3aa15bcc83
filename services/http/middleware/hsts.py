"""`Strict-Transport-Security` on every response of an HTTPS deployment
(GATEHOUSE_COOKIE_SECURE): browsers then never try this host over plain HTTP, where an
attacker on the network could read or plant cookies. Installed only when cookies are Secure.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class StrictTransportSecurity:
    def __init__(self, app: ASGIApp, *, max_age: int) -> None:
        self.app = app
        self._header = (b"strict-transport-security", f"max-age={max_age}".encode("ascii"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self._header]
            await send(message)

        await self.app(scope, receive, send_with_hsts)
