"""GET /openapi.json: the document, built from the app's routes on the first call and kept
for the life of the process."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.http.openapi.declare import Operation, Success, documented
from services.http.openapi.document import build_document

PATH = "/openapi.json"
CACHE_CONTROL = "public, max-age=300"


class OpenApiDocument:
    def __init__(self, *, session_cookie: str) -> None:
        self._session_cookie = session_cookie
        self._body: bytes | None = None

    def routes(self) -> list[Route]:
        return [Route(PATH, self.serve, methods=["GET"])]

    @documented(
        Operation(
            "GET",
            "getOpenApiDocument",
            "This document",
            Success(200, "the OpenAPI 3.1 document of the JSON API", {"type": "object"}),
            tag="meta",
            local=True,
        )
    )
    async def serve(self, request: Request) -> Response:
        if self._body is None:
            document = build_document(request.app.routes, session_cookie=self._session_cookie)
            self._body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return Response(
            self._body, media_type="application/json", headers={"Cache-Control": CACHE_CONTROL}
        )
