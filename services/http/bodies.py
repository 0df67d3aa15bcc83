"""Reading JSON request bodies: size cap, UTF-8 JSON object, typed fields.

Unknown fields are ignored. Anything malformed becomes an ApiError (400 or 413), never an
exception that escapes the handler.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from services.http.errors import ApiError


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"the request body exceeds {max_bytes} bytes; send a smaller one"
    )


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, read up to `max_bytes` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise ApiError(
                400, "invalid_request", "the Content-Length header is not a number"
            ) from None
        if declared_bytes > max_bytes:
            raise _too_large(max_bytes)
    body = bytearray()
    try:
        # A chunked body declares no length: cap what has arrived so far.
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise _too_large(max_bytes)
    except ClientDisconnect:
        raise ApiError(
            400, "invalid_request", "the client closed the connection mid-body"
        ) from None
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError covers JSONDecodeError and integers too long to convert.
        raise ApiError(400, "invalid_json", "the request body is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "the request body must be a JSON object")
    return value


def required_string(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if value is None:
        raise ApiError(400, "invalid_request", f"`{field}` is required")
    if not isinstance(value, str):
        raise ApiError(400, "invalid_request", f"`{field}` must be a string")
    return value


def optional_string(body: dict[str, Any], field: str) -> str | None:
    """The field's value, or None when it is absent or null."""
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, "invalid_request", f"`{field}` must be a string")
    return value


def is_encodable(text: str) -> bool:
    """False for strings with lone surrogates (valid in JSON, impossible in protobuf/UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
