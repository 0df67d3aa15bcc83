"""The HTTP tier's Starlette application: API routes, web pages, pictures, ops endpoints, and
what they depend on.

The lifespan starts the picture decoders' fork server, replica discovery, the JWT key watch and
the RPC pools, and stops them. /readyz stays 503 until the signing keys are loaded from etcd and
an auth replica is connected (`worker_readiness`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from services.foundation.discovery import ReplicaWatcher
from services.foundation.ops import ops_app
from services.http.account_calls import AccountCalls
from services.http.api import Api
from services.http.auth_client import AuthClient
from services.http.avatars.blobstore import open_blob_store
from services.http.avatars.decode_pool import DecodePool, fast_lane, job_limits
from services.http.avatars.files import AvatarFiles
from services.http.avatars.replace import Avatars
from services.http.callers import Callers
from services.http.client_ip import ClientAddresses
from services.http.csrf import CsrfTokens
from services.http.devices import DeviceCookie
from services.http.errors import EXCEPTION_HANDLERS
from services.http.heartbeat import WorkerHeartbeat, heartbeat_folder
from services.http.middleware.admission import HASHING_PATHS, AdmissionLimit
from services.http.middleware.body_deadline import UPLOAD_ROUTES, BodyDeadline
from services.http.middleware.crosssite import CrossSiteGuard
from services.http.middleware.disconnect import CancelOnDisconnect
from services.http.middleware.header_limit import HeaderSizeLimit
from services.http.middleware.hsts import StrictTransportSecurity
from services.http.middleware.request_context import RequestContextMiddleware
from services.http.middleware.upload_limit import UploadLimit
from services.http.pages import Pages
from services.http.sessions import Sessions
from services.http.settings import HttpSettings
from services.http.signing_keys import SigningKeys
from services.http.tokens import TokenVerifier
from services.http.unread_body import UnreadBodyDrain

# Unread request bodies up to this size are read before answering (services.http.unread_body).
DRAIN_MIN_BYTES = 16 * 1024 * 1024


def api_port_ops_routes(
    readiness: Callable[[], str | None], settings: HttpSettings
) -> list[BaseRoute]:
    """/healthz and /readyz, and /metrics unless GATEHOUSE_METRICS_ON_API_PORT is off (the ops
    port of the main process serves all three either way: services.http.ops_port)."""
    routes: list[BaseRoute] = ops_app(readiness).routes
    if settings.metrics_on_api_port:
        return routes
    return [route for route in routes if getattr(route, "path", None) != "/metrics"]


def worker_readiness(*parts: Callable[[], str | None]) -> Callable[[], str | None]:
    """Ready when every part is; else each missing part's reason, joined by "; "."""

    def readiness() -> str | None:
        missing = [reason for part in parts if (reason := part()) is not None]
        return "; ".join(missing) if missing else None

    return readiness


def create_app(settings: HttpSettings) -> Starlette:
    auth = AuthClient(settings)
    tokens = TokenVerifier(
        settings.jwt_public_keys,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
    )
    replica_watcher = ReplicaWatcher(
        settings.etcd_endpoints, settings.discovery_prefix, auth.update_replicas
    )
    signing_keys = SigningKeys(
        settings.etcd_endpoints,
        settings.jwt_keys_prefix,
        tokens.replace_published,
        key_count=lambda: tokens.key_count,
        refresh_interval=settings.jwt_key_refresh_interval,
        refresh_timeout=settings.jwt_key_refresh_timeout,
    )
    readiness = worker_readiness(signing_keys.readiness, auth.readiness)
    accounts = AccountCalls(auth)
    csrf = CsrfTokens(settings.csrf_secret, secure_cookie=settings.cookie_secure)
    sessions = Sessions(tokens, signing_keys, csrf, secure_cookie=settings.cookie_secure)
    client_addresses = ClientAddresses(settings.trusted_proxies)
    callers = Callers(client_addresses, DeviceCookie(secure_cookie=settings.cookie_secure))
    blob_store = open_blob_store(settings, auth)
    decoders = DecodePool(
        settings.picture_decoders,
        job_limits(settings),
        fast_lane(settings),
        queue_timeout=settings.call_timeout,
    )
    avatars = Avatars(accounts, blob_store, decoders)

    heartbeat = WorkerHeartbeat(heartbeat_folder(), readiness)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # As in the auth replica (services.auth.replica): each part stops in reverse order of start.
        async with AsyncExitStack() as stack:
            await decoders.start()
            stack.push_async_callback(decoders.close)
            await auth.start()
            stack.push_async_callback(auth.close)
            await signing_keys.start()
            stack.push_async_callback(signing_keys.stop)
            await replica_watcher.start()
            stack.push_async_callback(replica_watcher.stop)
            await heartbeat.start()
            stack.push_async_callback(heartbeat.stop)
            yield

    hsts = (
        [Middleware(StrictTransportSecurity, max_age=settings.hsts_max_age)]
        if settings.cookie_secure
        else []
    )
    app = Starlette(
        routes=[
            *Api(accounts, sessions, avatars, settings, callers).routes(),
            *Pages(accounts, sessions, avatars, settings, callers).routes(),
            *AvatarFiles(blob_store).routes(),
            *api_port_ops_routes(readiness, settings),
        ],
        middleware=[
            # Outermost, so that every answer carries X-Request-ID and is counted, the early
            # refusals (431, 503) of the middlewares below included.
            Middleware(RequestContextMiddleware),
            *hsts,
            Middleware(HeaderSizeLimit, max_bytes=settings.max_header_bytes),
            Middleware(AdmissionLimit, limit=settings.max_in_flight),
            Middleware(UploadLimit, limit=settings.max_uploads_in_flight, routes=UPLOAD_ROUTES),
            Middleware(
                BodyDeadline,
                body_timeout=settings.body_timeout,
                upload_grace=settings.upload_grace,
                upload_min_rate=settings.upload_min_rate,
            ),
            Middleware(CancelOnDisconnect, paths=HASHING_PATHS, routes=UPLOAD_ROUTES),
            Middleware(
                UnreadBodyDrain, max_bytes=max(DRAIN_MIN_BYTES, 2 * settings.max_avatar_bytes)
            ),
            Middleware(
                CrossSiteGuard,
                allowed_origins=settings.allowed_origins,
                cookie_secure=settings.cookie_secure,
                forwarded_https=client_addresses.forwarded_https,
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # "/api/v1/me/" is a 404 like any unknown path, not a redirect to "/api/v1/me".
    app.router.redirect_slashes = False
    app.state.auth = auth
    app.state.tokens = tokens
    app.state.signing_keys = signing_keys
    # Who the client is (IP, HTTPS per a trusted proxy): for other parts that must know.
    app.state.client_addresses = callers.addresses
    return app
