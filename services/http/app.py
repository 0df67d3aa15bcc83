"""The HTTP tier's Starlette application: API routes, web pages, pictures, ops endpoints, and
what they depend on.

The lifespan starts the picture decoders' fork server, replica discovery, the JWT key watch and
the RPC pools, and stops them. /readyz stays 503 until the signing keys are loaded from etcd and
an auth replica is connected (`worker_readiness`); its body lists the kids of the signing keys
the worker holds (`signing_key_kids`, services.http.held_keys).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from services.foundation.discovery import ReplicaWatcher
from services.foundation.heap import CollectionCounts
from services.foundation.key_attestation import AttestationCheck
from services.foundation.metrics import histograms_flushed
from services.foundation.ops import ops_app
from services.http import metrics
from services.http.account_calls import AccountCalls
from services.http.account_lifecycle import AccountLifecycle
from services.http.api import Api
from services.http.auth_client import AuthClient
from services.http.avatars.blobstore import open_blob_store
from services.http.avatars.decode_pool import DecodePool, fast_lane, job_limits
from services.http.avatars.files import AvatarFiles
from services.http.avatars.picture_cache import MEMORY_CACHE_BYTES, PictureCache
from services.http.avatars.pod_forgets import PodForgets, pod_forgets_path
from services.http.avatars.replace import Avatars
from services.http.callers import Callers
from services.http.client_ip import ClientAddresses
from services.http.csrf import CsrfTokens
from services.http.devices import DeviceCookie
from services.http.errors import EXCEPTION_HANDLERS
from services.http.held_keys import HeldKeysReport, readyz_detail
from services.http.jwks import jwks_routes
from services.http.middleware.stack import middleware_stack
from services.http.openapi.route import OpenApiDocument
from services.http.pages import Pages
from services.http.replica_networks import AllowedReplicaNetworks
from services.http.session_api import SessionApi
from services.http.sessions import Sessions
from services.http.settings import HttpSettings
from services.http.signing_keys import SigningKeys
from services.http.tokens import TokenVerifier
from services.http.workers.heartbeat import WorkerHeartbeat, heartbeat_folder

log = logging.getLogger(__name__)


async def until_synced(
    signing_keys: SigningKeys, replica_watcher: ReplicaWatcher, timeout: float
) -> None:
    """Until the signing keys and the replicas are read from etcd, for at most `timeout` s.

    A worker accepts connections once its lifespan has started. A worker that replaces a dead
    one in a pod already in service gets new connections once its heartbeat says ready (or at
    once, when no other worker is ready: services.http.workers.respawn `serving`), with no
    readiness probe in between; before this wait it refused valid tokens (401) for want of
    their key.
    """
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(signing_keys.wait_loaded(), replica_watcher.wait_synced())
    except TimeoutError:
        log.warning(
            "signing keys or replicas not read from etcd within %g s; serving anyway", timeout
        )


def api_port_ops_routes(
    readiness: Callable[[], str | None],
    details: Callable[[], Mapping[str, object]],
    settings: HttpSettings,
) -> list[BaseRoute]:
    """/healthz and /readyz, and /metrics unless GATEHOUSE_METRICS_ON_API_PORT is off (the ops
    port of the main process serves all three either way: services.http.workers.ops_port)."""
    routes: list[BaseRoute] = ops_app(readiness, details).routes
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
        cache_size=settings.token_cache_size,
        attestation=(
            AttestationCheck(Path(settings.rpc_tls_ca), settings.rpc_tls_server_name)
            if settings.rpc_tls_on
            else None
        ),
    )
    allowed_replicas = AllowedReplicaNetworks(settings.auth_replica_cidrs, auth.update_replicas)
    replica_watcher = ReplicaWatcher(
        settings.etcd_access,
        settings.discovery_prefix,
        allowed_replicas.update,
        metrics.DISCOVERY_RECORDS_MALFORMED.set,
    )
    held_keys_report = HeldKeysReport()

    def keys_published(values: dict[str, bytes]) -> None:
        tokens.replace_published(values)
        held_keys_report.update(tokens.keys)

    signing_keys = SigningKeys(
        settings.etcd_access,
        settings.jwt_keys_prefix,
        keys_published,
        key_count=lambda: tokens.key_count,
        refresh_interval=settings.jwt_key_refresh_interval,
        refresh_timeout=settings.jwt_key_refresh_timeout,
        reset_grace=settings.jwt_keys_reset_grace,
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
    pod_forgets = PodForgets(pod_forgets_path())
    picture_cache = PictureCache(MEMORY_CACHE_BYTES, settings.picture_cache_seconds, pod_forgets)
    avatars = Avatars(
        accounts, blob_store, decoders, picture_cache, settings.max_uploads_per_client
    )
    lifecycle = AccountLifecycle(auth, avatars)

    heartbeat = WorkerHeartbeat(heartbeat_folder(), readiness, lambda: tokens.keys.kids)
    gc_collections = CollectionCounts()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # As in the auth replica (services.auth.replica): each part stops in reverse order of start.
        async with AsyncExitStack() as stack:
            # First in, so last out: its final flush follows everything the parts observed.
            await stack.enter_async_context(histograms_flushed())
            await decoders.start()
            stack.push_async_callback(decoders.close)
            pod_forgets.open()
            stack.callback(pod_forgets.close)
            await auth.start()
            stack.push_async_callback(auth.close)
            held_keys_report.update(tokens.keys)  # GATEHOUSE_JWT_PUBLIC_KEYS, before etcd's
            await signing_keys.start()
            stack.push_async_callback(signing_keys.stop)
            await replica_watcher.start()
            stack.push_async_callback(replica_watcher.stop)
            await until_synced(signing_keys, replica_watcher, settings.call_timeout)
            await heartbeat.start()
            stack.push_async_callback(heartbeat.stop)
            gc_collections.start()
            stack.callback(gc_collections.stop)
            yield

    app = Starlette(
        routes=[
            *Api(accounts, sessions, avatars, settings, callers, lifecycle).routes(),
            *SessionApi(accounts, sessions, avatars, settings, callers, lifecycle).routes(),
            *Pages(accounts, sessions, avatars, settings, callers, lifecycle).routes(),
            *AvatarFiles(blob_store, picture_cache).routes(),
            *jwks_routes(lambda: tokens.keys, signing_keys.readiness),
            *OpenApiDocument(session_cookie=sessions.cookie_name).routes(),
            *api_port_ops_routes(readiness, lambda: readyz_detail(tokens.keys), settings),
        ],
        middleware=middleware_stack(settings, client_addresses, gc_collections),
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
