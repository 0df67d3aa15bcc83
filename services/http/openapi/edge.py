"""The answers a call can get from outside its handler: the middlewares' refusals, the shared
steps every authenticated call or JSON body goes through, and the auth service's availability.
Read from the constants the middlewares use, so that the document follows them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from services.http.middleware.body_deadline import UPLOAD_ROUTES
from services.http.openapi.declare import Operation
from services.http.sessions import UNSAFE_METHODS


@dataclass(frozen=True)
class Header:
    name: str
    description: str
    schema: tuple[tuple[str, str], ...]
    # Sent with every answer of its codes, whatever the HTTP version.
    always: bool = True

    def entry(self, *, required: bool) -> dict[str, Any]:
        return {
            "description": self.description,
            "required": required and self.always,
            "schema": dict(self.schema),
        }


RETRY_AFTER = Header(
    "Retry-After",
    "seconds to wait before trying again",
    (("type", "string"), ("pattern", "^[0-9]+$")),
)
WWW_AUTHENTICATE = Header("WWW-Authenticate", "`Bearer`", (("type", "string"),))
CONNECTION = Header(
    "Connection",
    "`close` under HTTP/1.x (HTTP/2 has no such header): the rest of the body is not read",
    (("type", "string"),),
    always=False,
)


def header_of(status: int, code: str) -> tuple[Header, ...]:
    """The headers that always come with the error answer (status, code)."""
    if status == 503 or code == "too_many_attempts":
        return (RETRY_AFTER,)
    if code == "unauthenticated":
        return (WWW_AUTHENTICATE,)
    if code == "request_timeout":
        return (CONNECTION,)
    return ()


def refusals(path: str, operation: Operation) -> Iterator[tuple[int, str]]:
    """(status, code) of every answer other than the handler's own that `operation` on `path`
    can get."""
    method = operation.method
    # Every call: the header cap, the admission limit, and the auth service's availability.
    yield 431, "request_header_fields_too_large"
    yield 503, "overloaded"
    if not operation.local:
        yield 503, "unavailable"
        # The auth service failed on its side (INTERNAL), or answered a status this tier does
        # not map (services.http.errors): the replica's fault or a deployment mistake.
        yield 500, "internal_error"
    if operation.needs_session:
        yield 401, "unauthenticated"
        yield 503, "not_ready"  # the signing keys were never read yet
    if method in UNSAFE_METHODS:
        # Origin or Sec-Fetch-Site of another site, on a call that sets the session cookie
        # (SESSION_ENTRY_PATHS) or carries one, whatever it needs (middleware/crosssite.py);
        # a cookie call without its X-CSRF-Token header.
        yield 403, "csrf_failed"
    if operation.json_body is not None or operation.upload is not None:
        yield 400, "invalid_request"
        yield 408, "request_timeout"
        yield 413, "payload_too_large"
    if operation.json_body is not None:
        yield 400, "invalid_json"
        yield 415, "unsupported_media_type"
    if operation.hashes_password:
        yield 429, "too_many_attempts"
    if (method, path) in UPLOAD_ROUTES:
        yield 415, "unsupported_media_type"  # not a PNG, JPEG, WebP or GIF
