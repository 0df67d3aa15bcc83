"""The sandboxing Content-Security-Policy on every answer under /avatars/: the pictures, their
304s and 404s, and the refusals of the middlewares too. A picture is never a document: nothing
in it may run, even when it is opened on its own. (`X-Content-Type-Options: nosniff` is on
every answer of the app: request_context.py.)
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.http.avatars.keys import AVATARS_PATH

PICTURE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
_CSP_HEADER = (b"content-security-policy", PICTURE_CSP.encode("ascii"))


class PictureSandbox:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(AVATARS_PATH):
            await self.app(scope, receive, send)
            return

        async def send_sandboxed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), _CSP_HEADER]
            await send(message)

        await self.app(scope, receive, send_sandboxed)
