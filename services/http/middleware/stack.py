"""The HTTP tier's middlewares, outermost first, and why they sit in that order."""

from __future__ import annotations

from starlette.middleware import Middleware

from services.foundation.heap import CollectionCounts
from services.http.client_ip import ClientAddresses
from services.http.middleware.admission import LOGIN_ROUTES, AdmissionLimit
from services.http.middleware.body_deadline import UPLOAD_ROUTES, BodyDeadline
from services.http.middleware.crosssite import CrossSiteGuard
from services.http.middleware.disconnect import CancelOnDisconnect
from services.http.middleware.header_limit import HeaderSizeLimit
from services.http.middleware.hsts import StrictTransportSecurity
from services.http.middleware.picture_sandbox import PictureSandbox
from services.http.middleware.request_context import RequestContextMiddleware
from services.http.middleware.unread_body import UnreadBodyDrain
from services.http.middleware.upload_limit import UploadLimit
from services.http.settings import HttpSettings

# Unread request bodies up to this size are read before answering (unread_body.py).
DRAIN_MIN_BYTES = 16 * 1024 * 1024


def middleware_stack(
    settings: HttpSettings, client_addresses: ClientAddresses, gc_collections: CollectionCounts
) -> list[Middleware]:
    hsts = (
        [Middleware(StrictTransportSecurity, max_age=settings.hsts_max_age)]
        if settings.cookie_secure
        else []
    )
    return [
        # Outermost, so that every answer carries them, the last-resort 500 of the request
        # context too: every /avatars/ answer is sandboxed, every answer of HTTPS keeps to it.
        *hsts,
        Middleware(PictureSandbox),
        # Inside those, so that every answer carries X-Request-ID and is counted, the early
        # refusals (431, 503) of the middlewares below included.
        Middleware(RequestContextMiddleware, gc_collections=gc_collections),
        # Refusals that cost nothing come before anything that holds a slot or reads a body.
        Middleware(HeaderSizeLimit, max_bytes=settings.max_header_bytes),
        Middleware(
            AdmissionLimit,
            concurrency=settings.admission_concurrency,
            queue_target=settings.admission_queue_target,
            ceiling=settings.max_in_flight,
            # A share as large as the budget would keep no client from taking all of it.
            hashing_per_client=min(
                settings.max_hashing_per_client, max(1, settings.admission_concurrency // 2)
            ),
            client_of=client_addresses.client_key,
            client_wait=settings.call_timeout,
            hashing_target=settings.hashing_queue_target,
        ),
        Middleware(
            UploadLimit,
            limit=settings.max_uploads_in_flight,
            routes=UPLOAD_ROUTES,
            per_client=settings.max_uploads_per_client,
            client_of=client_addresses.client_key,
            max_body_bytes=settings.max_avatar_bytes,
        ),
        Middleware(
            BodyDeadline,
            body_timeout=settings.body_timeout,
            upload_grace=settings.upload_grace,
            upload_min_rate=settings.upload_min_rate,
            client_of=client_addresses.client_key,
        ),
        Middleware(CancelOnDisconnect, routes=LOGIN_ROUTES | UPLOAD_ROUTES),
        Middleware(UnreadBodyDrain, max_bytes=max(DRAIN_MIN_BYTES, 2 * settings.max_avatar_bytes)),
        Middleware(
            CrossSiteGuard,
            allowed_origins=settings.allowed_origins,
            cookie_secure=settings.cookie_secure,
            forwarded_https=client_addresses.forwarded_https,
        ),
    ]
