"""`GET /.well-known/jwks.json`: the public keys that verify Gatehouse's tokens, for other
services (README, "Verifying a token from another service").

Every key the worker holds (published in etcd, and GATEHOUSE_JWT_PUBLIC_KEYS), once each, under
its RFC 7638 thumbprint kid; public members only. The body is rendered once per key set change
(services.http.public_keys.KeySet), so a request costs a dictionary lookup. Consumers may cache
it for JWKS_MAX_AGE_SECONDS: a key is published at least that long before it signs tokens.
While the keys are not loaded, or none is held, the answer is 503 `not_ready` with Retry-After,
never an empty set that a consumer would cache.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.http.errors import RETRY_AFTER_SECONDS, ApiError
from services.http.public_keys import KeySet

JWKS_PATH = "/.well-known/jwks.json"
JWKS_MAX_AGE_SECONDS = 300


def jwks_routes(
    held_keys: Callable[[], KeySet], keys_missing: Callable[[], str | None]
) -> list[BaseRoute]:
    """`held_keys()` is the worker's key set now; `keys_missing()` None once it is loaded and
    holds a key, else why not (services.http.signing_keys.SigningKeys.readiness)."""

    async def jwks(request: Request) -> Response:
        missing = keys_missing()
        if missing is not None:
            raise ApiError(
                503,
                "not_ready",
                f"{missing}; try again after the Retry-After delay",
                {"Retry-After": str(RETRY_AFTER_SECONDS), "Cache-Control": "no-store"},
            )
        return Response(
            held_keys().jwks_body,
            media_type="application/json",
            headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE_SECONDS}"},
        )

    return [Route(JWKS_PATH, jwks, methods=["GET"])]
