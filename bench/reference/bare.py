"""A bare Starlette endpoint answering what GET /api/v1/me answers, with no work behind it."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

PROFILE = {"id": "1", "username": "u000000001", "nickname": "u000000001", "avatar_url": None}


async def me(request: Request) -> Response:
    return JSONResponse(PROFILE)


app = Starlette(routes=[Route("/api/v1/me", me)])
