"""Reading request bodies: a size cap (declared and streamed), then JSON objects with typed
fields, or HTML forms (urlencoded or multipart, files included).

Unknown fields are ignored. Anything malformed becomes an ApiError (400, 413, or 415 for a
JSON body sent as another media type), never an exception that escapes the handler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from services.http.errors import ApiError
from services.http.middleware.unread_body import declares_body

FORM_MAX_FIELDS = 16
FORM_MAX_FIELD_BYTES = 64 * 1024
JSON_MEDIA_TYPE = "application/json"
URLENCODED_MEDIA_TYPE = "application/x-www-form-urlencoded"
MULTIPART_MEDIA_TYPE = "multipart/form-data"
# How a form's Content-Type may name its charset (lowercased, "_" read as "-").
UTF8_NAMES = frozenset({"utf-8", "utf8"})


def too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"the request body exceeds {max_bytes} bytes; send a smaller one"
    )


def _client_left() -> ApiError:
    return ApiError(400, "invalid_request", "the client closed the connection mid-body")


def refuse_declared_oversize(request: Request, max_bytes: int) -> None:
    """413 at once when Content-Length announces more than `max_bytes`: nothing is read."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        declared_bytes = int(declared)
    except ValueError:
        raise ApiError(
            400, "invalid_request", "the Content-Length header is not a number"
        ) from None
    if declared_bytes > max_bytes:
        raise too_large(max_bytes)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, read up to `max_bytes` (declared or streamed)."""
    refuse_declared_oversize(request, max_bytes)
    body = bytearray()
    try:
        # A chunked body declares no length: cap what has arrived so far.
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise too_large(max_bytes)
    except ClientDisconnect:
        raise _client_left() from None
    return bytes(body)


def media_type_of(request: Request) -> str:
    """The Content-Type's media type, lowercased (media types are case-insensitive), without
    its parameters (`application/json; charset=utf-8` is `application/json`)."""
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def unsupported_media_type() -> ApiError:
    return ApiError(
        415,
        "unsupported_media_type",
        "send the body as JSON with the header `Content-Type: application/json`",
    )


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, read up to `max_bytes`. A body is accepted only as
    `Content-Type: application/json` (415 otherwise): browsers let any site send text/plain
    and form bodies cross-site without asking, never JSON. A request without a body is judged
    by the JSON rules alone."""
    refuse_declared_oversize(request, max_bytes)
    json_declared = media_type_of(request) == JSON_MEDIA_TYPE
    if declares_body(request.scope) and not json_declared:
        raise unsupported_media_type()
    body = await read_body(request, max_bytes)
    if body and not json_declared:  # a body that declared no length
        raise unsupported_media_type()
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError covers JSONDecodeError and integers too long to convert.
        raise ApiError(400, "invalid_json", "the request body is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "the request body must be a JSON object")
    return value


@dataclass(frozen=True)
class Form:
    fields: dict[str, str]
    files: dict[str, bytes]


async def read_form(request: Request, max_bytes: int, *, max_files: int = 0) -> Form:
    """An urlencoded or multipart form of at most `max_bytes`; the last value of a repeated
    name wins. Any other content type reads as an empty form."""
    refuse_declared_oversize(request, max_bytes)
    media_type = media_type_of(request)
    if media_type == URLENCODED_MEDIA_TYPE:
        return Form(fields=_urlencoded_fields(await read_body(request, max_bytes)), files={})
    if media_type == MULTIPART_MEDIA_TYPE:
        _refuse_other_charsets(request)
    capped = Request(request.scope, _capped_receive(request.receive, max_bytes))
    try:
        form = await capped.form(
            max_files=max_files, max_fields=FORM_MAX_FIELDS, max_part_size=FORM_MAX_FIELD_BYTES
        )
    except HTTPException as exc:  # Starlette's answer to a malformed form
        raise ApiError(400, "invalid_request", f"the form cannot be read: {exc.detail}") from None
    except ClientDisconnect:
        raise _client_left() from None
    try:
        fields: dict[str, str] = {}
        files: dict[str, bytes] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[name] = await value.read()
            else:
                fields[name] = value
    finally:
        await form.close()
    return Form(fields=fields, files=files)


def _urlencoded_fields(body: bytes) -> dict[str, str]:
    """The fields of an urlencoded body, read as UTF-8 both raw and percent-encoded. Starlette
    reads the raw bytes as Latin-1, so `curl -d nickname=José` would store "JosÃ©"; and it
    turns bytes that are not UTF-8 into U+FFFD where this refuses them."""
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=FORM_MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise ApiError(
            400, "invalid_request", "the form is not UTF-8 text; send it as UTF-8"
        ) from None
    except ValueError:  # parse_qsl's answer past max_num_fields
        raise ApiError(
            400,
            "invalid_request",
            f"the form has more than {FORM_MAX_FIELDS} fields; send only the form's own",
        ) from None
    return dict(pairs)


def _refuse_other_charsets(request: Request) -> None:
    """400 for a multipart form whose Content-Type names a charset other than UTF-8. Starlette
    decodes the fields in the charset named there, with any codec Python has: UTF-7 spells lone
    surrogates ("+2AA-"), which no page can echo and no protobuf string can hold, and punycode
    raises an error Starlette does not catch, after a decode that takes CPU time quadratic in
    the field's length (0.42-0.55 s for one 64 KiB field). Browsers name no charset there.
    The name is not given to codecs.lookup: Python's encodings package remembers every name it
    did not know, forever (100,000 made-up names: 33 MB)."""
    charset = _charset_parameter(request.headers["content-type"])
    if charset is None:
        return
    if charset.strip().lower().replace("_", "-") not in UTF8_NAMES:
        raise ApiError(
            400,
            "invalid_request",
            f"the form's charset must be UTF-8, not {charset[:40]!r}; send it as UTF-8",
        )


def _charset_parameter(content_type: str) -> str | None:
    """The Content-Type's charset parameter, read by the parser Starlette reads it with."""
    _, parameters = parse_options_header(content_type)
    charset = parameters.get(b"charset")
    return None if charset is None else charset.decode("latin-1")


def _capped_receive(receive: Receive, max_bytes: int) -> Receive:
    received = 0

    async def receive_capped() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise too_large(max_bytes)
        return message

    return receive_capped


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
