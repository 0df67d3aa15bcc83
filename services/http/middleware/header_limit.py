"""431 for requests whose headers are too large, before anything reads them.

Servers cap the request head at their own read buffer and answer past it without the usual
error body (Granian: 431 past about 400 KiB; Hypercorn: 431 past 64 KiB, as
services.http.__main__ configures it). This cap, well below those, answers like every other
error: `{"error": {"code": "request_header_fields_too_large", ...}}`.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from services.http.errors import ApiError, error_response


class HeaderSizeLimit:
    """ASGI middleware: 431 when the names and values of all headers exceed `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # One response object serves every refusal: it holds no per-request state.
        self._refusal = error_response(
            ApiError(
                431,
                "request_header_fields_too_large",
                f"the request headers exceed {max_bytes} bytes; send smaller ones",
            )
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) for name, value in scope["headers"])
            if size > self.max_bytes:
                await self._refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
