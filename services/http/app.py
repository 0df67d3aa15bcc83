"""The HTTP tier's Starlette application: API routes, web pages, pictures, ops endpoints, and
what they depend on.

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
from services.http.account_calls import AccountCalls
from services.http.admission import HASHING_PATHS, AdmissionLimit
from services.http.api import Api
from services.http.auth_client import AuthClient
from services.http.avatar_files import AvatarFiles
from services.http.avatars import Avatars
from services.http.blobstore import open_blob_store
from services.http.callers import Callers
from services.http.client_ip import ClientAddresses, parse_trusted_proxies
from services.http.devices import DeviceCookie
from services.http.disconnect import CancelOnDisconnect
from services.http.draining import UnreadBodyDrain
from services.http.errors import EXCEPTION_HANDLERS
from services.http.middleware import RequestContextMiddleware
from services.http.pages import Pages
from services.http.sessions import Sessions
from services.http.settings import HttpSettings
from services.http.tokens import TokenVerifier, parse_public_keys

# Unread request bodies up to this size are read before answering (services.http.draining).
DRAIN_MIN_BYTES = 16 * 1024 * 1024


def create_app(settings: HttpSettings) -> Starlette:
    auth = AuthClient(settings)
    tokens = TokenVerifier(parse_public_keys(settings.jwt_public_keys))
    replica_watcher = ReplicaWatcher(
        settings.etcd_endpoints, settings.discovery_prefix, auth.update_replicas
    )
    key_watcher = PrefixWatcher(
        settings.etcd_endpoints, settings.jwt_keys_prefix, tokens.replace_published
    )
    accounts = AccountCalls(auth)
    callers = Callers(
        ClientAddresses(parse_trusted_proxies(settings.trusted_proxies)),
        DeviceCookie(secure_cookie=settings.cookie_secure),
    )
    sessions = Sessions(tokens, secure_cookie=settings.cookie_secure)
    blob_store = open_blob_store(settings, auth)
    avatars = Avatars(accounts, blob_store)

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
        routes=[
            *Api(accounts, sessions, avatars, settings, callers).routes(),
            *Pages(accounts, sessions, avatars, settings, callers).routes(),
            *AvatarFiles(blob_store).routes(),
            *ops_app(auth.readiness).routes,
        ],
        middleware=[
            Middleware(AdmissionLimit, limit=settings.max_in_flight),
            Middleware(RequestContextMiddleware),
            Middleware(CancelOnDisconnect, paths=HASHING_PATHS),
            Middleware(
                UnreadBodyDrain, max_bytes=max(DRAIN_MIN_BYTES, 2 * settings.max_avatar_bytes)
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # "/api/v1/me/" is a 404 like any unknown path, not a redirect to "/api/v1/me".
    app.router.redirect_slashes = False
    app.state.auth = auth
    app.state.tokens = tokens
    # Who the client is (IP, HTTPS per a trusted proxy): for other parts that must know.
    app.state.client_addresses = callers.addresses
    return app
