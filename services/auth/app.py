"""An auth replica's life: start its parts, serve, and drain on SIGTERM.

Drain order (the HTTP tier must stop sending before calls are refused):
1. not ready, and the discovery lease is revoked, so watchers drop this replica at once;
2. calls keep being served for GATEHOUSE_DRAIN_DELAY while every HTTP process notices;
3. new calls are answered DRAINING (not executed: the client retries them elsewhere);
4. calls in flight get GATEHOUSE_DRAIN_GRACE to finish; then everything closes and the
   process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from datetime import UTC, datetime

from services.auth import metrics
from services.auth.accounts import AccountStore
from services.auth.blobs import BlobTable
from services.auth.devices import DeviceCookies
from services.auth.handlers import AccountHandlers, BlobHandlers
from services.auth.migrate import apply_migrations
from services.auth.passwords import PasswordHasher
from services.auth.server import RpcServer, ServerLimits
from services.auth.settings import AuthSettings
from services.auth.snowflake import WorkerIdClaim
from services.auth.throttle import LoginThrottle
from services.auth.tokens import TokenIssuer, publish_public_key
from services.foundation.discovery import ServiceRecord, registration
from services.foundation.etcd import Backoff, connect
from services.foundation.ops import serve_ops
from services.foundation.protocol import PROTOCOL_MAX, PROTOCOL_MIN

log = logging.getLogger(__name__)


def advertised_host(settings: AuthSettings) -> str:
    if settings.advertise_host:
        return settings.advertise_host
    if settings.host not in ("0.0.0.0", "::", ""):
        return settings.host
    return socket.gethostbyname(socket.gethostname())


async def publish_key_until_done(settings: AuthSettings, issuer: TokenIssuer) -> None:
    """Publish the JWT public key, retrying while etcd is unreachable."""
    backoff = Backoff()
    while True:
        client = connect(settings.etcd_endpoints, backoff.attempt)
        try:
            await publish_public_key(client, settings.jwt_keys_prefix, issuer)
            return
        except Exception as exc:  # noqa: BLE001 - etcd may be down at start; keep trying
            log.warning("could not publish the JWT public key yet (%s); retrying", exc)
        finally:
            await client.close()
        await backoff.wait()


async def run(settings: AuthSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    if settings.migrate_on_start:
        applied = await apply_migrations(settings.mysql_primary_dsn, timeout=max(30.0, settings.mysql_timeout))
        if applied:
            log.info("applied migrations %s", ", ".join(applied))

    hasher = PasswordHasher(
        settings.peppers,
        cost=settings.bcrypt_cost,
        threads=settings.hash_threads,
        queue_limit=settings.hash_queue_limit,
    )
    metrics.HASH_QUEUE_DEPTH.set_function(lambda: hasher.queue_depth)
    issuer = TokenIssuer(
        settings.jwt_private_key,
        settings.token_ttl,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
    )
    store = await AccountStore.open(settings)
    blobs = await BlobTable.open(settings)
    worker_ids = WorkerIdClaim(
        settings.etcd_endpoints, settings.worker_id_prefix, settings.instance_id, lease_ttl=settings.lease_ttl
    )
    await worker_ids.start()
    metrics.WORKER_ID_HELD.set_function(lambda: worker_ids.generator is not None)
    key_publisher = asyncio.create_task(publish_key_until_done(settings, issuer), name="publish jwt key")

    throttle = LoginThrottle(
        store.cache,
        settings.throttle_limits(),
        memory_keys=settings.throttle_memory_keys,
        redis_timeout=settings.throttle_redis_timeout,
    )
    devices = DeviceCookies(settings.device_cookie_secret, settings.device_cookie_lifetime)
    handlers = AccountHandlers(
        store,
        hasher,
        issuer,
        worker_ids,
        settings.instance_id,
        settings.release,
        throttle=throttle,
        devices=devices,
    )
    agent = f"gatehouse-auth/{settings.release}"
    server = RpcServer(
        {**handlers.table(), **BlobHandlers(blobs).table()},
        ServerLimits(
            max_connections=settings.max_connections,
            max_frame_bytes=settings.max_frame_bytes,
            handshake_timeout=settings.handshake_timeout,
            idle_timeout=settings.idle_timeout,
        ),
        agent,
    )
    port = await server.start(settings.host, settings.port)
    record = ServiceRecord(
        instance_id=settings.instance_id,
        host=advertised_host(settings),
        port=port,
        protocol_min=PROTOCOL_MIN,
        protocol_max=PROTOCOL_MAX,
        release=settings.release,
        started_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )
    announcement = registration(
        settings.etcd_endpoints,
        settings.discovery_prefix,
        record,
        settings.lease_ttl,
        on_change=lambda held: metrics.DISCOVERY_REGISTERED.set(int(held)),
    )
    await announcement.start()

    draining = False

    def readiness() -> str | None:
        if draining:
            return "draining"
        if not store.ready:
            return "the MySQL primary is unreachable"
        return None

    ops_stop = asyncio.Event()
    ops = asyncio.create_task(serve_ops(settings.host, settings.ops_port, readiness, ops_stop), name="ops")
    log.info(
        "auth replica %s serving RPC on %s:%d (advertised %s), ops on %s:%d",
        settings.instance_id, settings.host, port, record.host, settings.host, settings.ops_port,
    )

    await stop.wait()
    draining = True
    log.info("draining: leaving discovery, serving %.1fs more, then refusing new calls", settings.drain_delay)
    await announcement.stop()
    await asyncio.sleep(settings.drain_delay)
    server.begin_drain()
    if not await server.wait_idle(settings.drain_grace):
        log.warning("%d calls still in flight after %.1fs; closing anyway", server.in_flight, settings.drain_grace)
    await server.close()
    key_publisher.cancel()
    await worker_ids.stop()
    await store.close()
    await blobs.close()
    hasher.close()
    ops_stop.set()
    await asyncio.gather(ops, key_publisher, return_exceptions=True)
    log.info("auth replica %s stopped", settings.instance_id)
    return 0
