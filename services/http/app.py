"""The HTTP tier's Starlette application: API routes, ops endpoints, and what they depend on.

The lifespan starts replica discovery, the JWT key watch and the RPC pools, and stops them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from services.foundation.discovery import ReplicaWatcher
from services.foundation.etcd import PrefixWatcher
from services.foundation.ops import ops_app
from services.http.api import Api
from services.http.auth_client import AuthClient
from services.http.errors import EXCEPTION_HANDLERS
from services.http.middleware import RequestContextMiddleware
from services.http.settings import HttpSettings
from services.http.tokens import TokenVerifier, parse_public_keys


def create_app(settings: HttpSettings) -> Starlette:
    auth = AuthClient(settings)
    tokens = TokenVerifier(parse_public_keys(settings.jwt_public_keys))
    replica_watcher = ReplicaWatcher(
        settings.etcd_endpoints, settings.discovery_prefix, auth.update_replicas
    )
    key_watcher = PrefixWatcher(
        settings.etcd_endpoints, settings.jwt_keys_prefix, tokens.replace_published
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await auth.start()
        await key_watcher.start()
        await replica_watcher.start()
        try:
            yield
        finally:
            await replica_watcher.stop()
            await key_watcher.stop()
            await auth.close()

    app = Starlette(
        routes=[*Api(auth, tokens, settings).routes(), *ops_app(auth.readiness).routes],
        middleware=[Middleware(RequestContextMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # "/api/v1/me/" is a 404 like any unknown path, not a redirect to "/api/v1/me".
    app.router.redirect_slashes = False
    app.state.auth = auth
    app.state.tokens = tokens
    return app
