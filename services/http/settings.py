"""Settings of the HTTP tier (see the README's configuration table)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.foundation.config import bounds_problems, report_problems, setting
from services.foundation.discovery import DiscoverySettings
from services.foundation.etcd_access import access_problems
from services.foundation.rpc.framing import DEFAULT_MAX_FRAME_BYTES, SMALLEST_MAX_FRAME_BYTES
from services.foundation.rpc.tls_settings import RpcTlsSettings
from services.http.client_ip import Network, parse_trusted_proxies
from services.http.origins import parse_origins
from services.http.public_keys import parse_public_keys

# Not imported from services.http.tokens: that imports prometheus_client, which the main
# process may import only once its multiprocess folder is set (services.http.__main__).
DEFAULT_TOKEN_CACHE_SIZE = 10_000

CSRF_SECRET_MIN_CHARS = 32

# Below this, a decoding child cannot even start decoding (with Pillow loaded it takes about
# 33 MB of address space).
MIN_PICTURE_MEMORY_BYTES = 64 * 1024 * 1024


def parse_bind_address(raw: str) -> str:
    """An IP address to listen on, as written. Granian binds only literals without a zone (a
    name that resolves to several addresses would need a socket each)."""
    address = raw.strip()
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        parsed = None
    if parsed is None or (isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id):
        raise ValueError(
            "expected an IP address without brackets, port, prefix or zone (0.0.0.0 for every"
            " IPv4 address, :: for every address, 127.0.0.1 for this machine only); host names"
            " are not resolved"
        )
    return address


@dataclass(frozen=True, kw_only=True)
class HttpSettings(DiscoverySettings, RpcTlsSettings):
    host: str = setting(
        "GATEHOUSE_HTTP_HOST",
        "127.0.0.1",
        "IP address the HTTP server binds (0.0.0.0 for every IPv4 address, :: for every address); a host name is refused",
        parse=parse_bind_address,
    )
    port: int = setting("GATEHOUSE_HTTP_PORT", 8000, "HTTP port", at_least=1, at_most=65535)
    ops_port: int = setting(
        "GATEHOUSE_HTTP_OPS_PORT",
        9101,
        "Ops port of the pod (/healthz, /readyz, /metrics), served once per pod by the main process",
        at_least=1,
        at_most=65535,
    )
    metrics_on_api_port: bool = setting(
        "GATEHOUSE_METRICS_ON_API_PORT",
        True,
        "Also serve /metrics on the API port (the chart turns it off)",
    )
    server: str = setting(
        "GATEHOUSE_HTTP_SERVER",
        "granian",
        "ASGI server: granian or hypercorn",
        choices=("granian", "hypercorn"),
    )
    workers: int = setting("GATEHOUSE_HTTP_WORKERS", 2, "Worker processes", at_least=1)
    respawn_max_delay: float = setting(
        "GATEHOUSE_HTTP_RESPAWN_MAX_DELAY",
        30.0,
        "Longest wait in seconds before a dead worker is replaced: the first replacement starts at once, and the wait doubles from 0.5 s while replacements keep dying within 10 s of their start",
        at_least=0,
    )
    worker_stuck_timeout: float = setting(
        "GATEHOUSE_HTTP_WORKER_STUCK_TIMEOUT",
        10.0,
        "Seconds a worker may go without a heartbeat (its event loop stuck, the process stopped) before it is killed and replaced",
        at_least=1,
        # Below the 60 s after which the ops port deletes a heartbeat file (heartbeat.py): a
        # worker whose file is gone has never beaten, as far as the check can tell.
        at_most=50,
    )
    metrics_dir: str = setting(
        "GATEHOUSE_METRICS_DIR",
        "",
        "Folder for multiprocess metrics; default a fresh temporary folder",
    )

    jwt_public_keys: tuple[Ed25519PublicKey, ...] = setting(
        "GATEHOUSE_JWT_PUBLIC_KEYS",
        (),
        "Extra Ed25519 public keys (PEM, concatenated) trusted for tokens that name them by "
        "kid; also listed in the JWKS",
        parse=parse_public_keys,
    )
    token_cache_size: int = setting(
        "GATEHOUSE_TOKEN_CACHE_SIZE",
        DEFAULT_TOKEN_CACHE_SIZE,
        "Session tokens of at most 1024 characters each worker remembers as verified, so their signature is checked once (about 2 KiB each at most); the oldest makes room; 0 checks every token",
        at_least=0,
        at_most=1_000_000,
    )
    gc_young_threshold: int = setting(
        "GATEHOUSE_GC_YOUNG_THRESHOLD",
        7_000,
        "Live container objects at which a worker's garbage collector runs a young collection (CPython's default is 700, which requests in flight reach on their own); any value but 0 also freezes what the worker built at start-up out of the collector's sight; 0 leaves CPython's collector as it is",
        at_least=0,
        at_most=1_000_000,
    )
    jwt_key_refresh_interval: float = setting(
        "GATEHOUSE_JWT_KEY_REFRESH_INTERVAL",
        1.0,
        "Seconds at least between two reads of the JWT keys from etcd that tokens with an unknown key id cause, per worker; such a token within it is refused at once",
        above=0,
        at_most=3600,
    )
    jwt_key_refresh_timeout: float = setting(
        "GATEHOUSE_JWT_KEY_REFRESH_TIMEOUT",
        1.0,
        "Seconds one such read of the JWT keys may take; requests with an unknown key id wait for it at most this long",
        above=0,
        at_most=60,
    )
    jwt_keys_reset_grace: float = setting(
        "GATEHOUSE_JWT_KEYS_RESET_GRACE",
        30.0,
        "Seconds a worker keeps verifying with the JWT keys it held when etcd lost its data (its revision went back), for the auth replicas to publish theirs again (every GATEHOUSE_JWT_KEYS_POLL_INTERVAL of theirs, 10 s by default); the grace counts only while the worker's watch reaches etcd (nobody can publish meanwhile); a key the new etcd history writes is taken from it at once, but a key withdrawn meanwhile verifies until the grace ends; 0 drops them at once",
        at_least=0,
        at_most=300,
    )

    pool_min_connections: int = setting(
        "GATEHOUSE_POOL_MIN_CONNECTIONS", 1, "Connections kept per auth replica", at_least=1
    )
    pool_max_connections: int = setting(
        "GATEHOUSE_POOL_MAX_CONNECTIONS", 4, "Connections at most per auth replica", at_least=1
    )
    connect_timeout: float = setting(
        "GATEHOUSE_CONNECT_TIMEOUT", 1.0, "Seconds to connect and handshake", above=0, at_most=60
    )
    max_frame_bytes: int = setting(
        "GATEHOUSE_MAX_FRAME_BYTES",
        DEFAULT_MAX_FRAME_BYTES,
        "Largest RPC frame sent to or accepted from an auth replica: the auth service's"
        " setting of the same name",
        at_least=SMALLEST_MAX_FRAME_BYTES,
    )
    call_timeout: float = setting(
        "GATEHOUSE_CALL_TIMEOUT", 10.0, "Deadline in seconds of one API call's RPCs", above=0
    )
    pool_idle_timeout: float = setting(
        "GATEHOUSE_POOL_IDLE_TIMEOUT",
        60.0,
        "Seconds before an idle extra connection closes, or a kept one is pinged; keep it below the auth service's GATEHOUSE_IDLE_TIMEOUT",
        above=0,
    )
    eject_seconds: float = setting(
        "GATEHOUSE_EJECT_SECONDS",
        2.0,
        "Seconds a replica is skipped after a connect failed or its connection broke, or after it answered five calls of one method in a row with an internal error",
        at_least=0,
        at_most=3600,
    )
    attempt_timeout: float = setting(
        "GATEHOUSE_ATTEMPT_TIMEOUT",
        0.5,
        "Seconds an attempt of an idempotent RPC (a read) may take before it is abandoned and sent to another replica (when GATEHOUSE_HEDGE_RATIO allows; else it waits to GATEHOUSE_CALL_TIMEOUT); writes and logins always get the whole call deadline",
        above=0,
    )
    hedge_ratio: float = setting(
        "GATEHOUSE_HEDGE_RATIO",
        0.05,
        "Extra attempts of idempotent RPCs (hedges after the method's p99, retries after the attempt timeout or OVERLOADED) at most, as a share of calls, per worker; 0 turns them off",
        at_least=0,
        at_most=1,
    )
    hedge_min_delay: float = setting(
        "GATEHOUSE_HEDGE_MIN_DELAY",
        0.02,
        "Seconds an idempotent RPC waits at least before a hedged second attempt on another replica; the wait is the method's recent p99, at most GATEHOUSE_ATTEMPT_TIMEOUT",
        above=0,
    )
    ping_interval: float = setting(
        "GATEHOUSE_PING_INTERVAL",
        0.1,
        "Seconds between health pings of an auth replica that has calls outstanding but answered nothing in that time, or is out of rotation",
        above=0,
    )
    ping_timeout: float = setting(
        "GATEHOUSE_PING_TIMEOUT",
        0.25,
        "Seconds an auth replica gets to answer a health ping; past that it is out of rotation (its reads in flight go to another replica) until it answers one",
        above=0,
    )

    cookie_secure: bool = setting(
        "GATEHOUSE_COOKIE_SECURE",
        False,
        "HTTPS deployment: cookies are Secure and named __Host-session and __Host-csrf, and responses carry HSTS",
    )
    hsts_max_age: int = setting(
        "GATEHOUSE_HSTS_MAX_AGE",
        31536000,
        "max-age in seconds of Strict-Transport-Security (sent when GATEHOUSE_COOKIE_SECURE is on)",
        at_least=0,
    )
    csrf_secret: str = setting(
        "GATEHOUSE_CSRF_SECRET",
        help="Key of the CSRF tokens (HMAC of the session id); the same on every HTTP pod, at least 32 characters",
        secret=True,
    )
    allowed_origins: tuple[str, ...] = setting(
        "GATEHOUSE_ALLOWED_ORIGINS",
        (),
        "Origins (scheme://host[:port], comma-separated) allowed to log in and make cookie calls; empty: the request's own origin",
        parse=parse_origins,
    )
    token_issuer: str = setting(
        "GATEHOUSE_TOKEN_ISSUER",
        "gatehouse",
        "`iss` that session tokens must carry (tokens with neither iss nor aud, issued before them, are accepted)",
    )
    token_audience: str = setting(
        "GATEHOUSE_TOKEN_AUDIENCE",
        "gatehouse",
        "`aud` that session tokens must carry (tokens with neither iss nor aud, issued before them, are accepted)",
    )
    auth_replica_cidrs: tuple[Network, ...] = setting(
        "GATEHOUSE_AUTH_REPLICA_CIDRS",
        (),
        "CIDRs that auth replica addresses in discovery must be inside (e.g. the pod network), comma-separated; other records are ignored; empty: any address",
        parse=parse_trusted_proxies,
    )
    trusted_proxies: tuple[Network, ...] = setting(
        "GATEHOUSE_TRUSTED_PROXIES",
        (),
        "CIDRs of reverse proxies whose X-Forwarded-For/-Proto are believed, comma-separated; empty: the TCP peer is the client",
        parse=parse_trusted_proxies,
    )
    max_body_bytes: int = setting(
        "GATEHOUSE_MAX_BODY_BYTES",
        64 * 1024,
        "Largest accepted JSON body",
        # The largest valid request: a password change, two passwords of up to 1024 code points
        # each (256 characters, decomposed), which JSON escapes and forms percent-encode to 12
        # bytes per 4-byte character: 24 KiB and the rest. Below that, valid passwords get 413.
        at_least=32 * 1024,
    )
    max_in_flight: int = setting(
        "GATEHOUSE_MAX_IN_FLIGHT",
        8192,
        "Hard ceiling on the requests one worker holds at once, running or waiting to start, not counting those waiting for their body (and as many that wait on password hashing); beyond it 503 with Retry-After at once. The default, the connection limit, never refuses a closed loop",
        at_least=1,
    )
    admission_concurrency: int = setting(
        "GATEHOUSE_ADMISSION_CONCURRENCY",
        64,
        "Requests one worker runs at once (and as many that wait on password hashing: logins, signups, password changes, deletions); further ones wait in line, first in first out, for up to GATEHOUSE_ADMISSION_QUEUE_TARGET (GATEHOUSE_HASHING_QUEUE_TARGET for those)",
        at_least=1,
    )
    max_hashing_per_client: int = setting(
        "GATEHOUSE_MAX_HASHING_PER_CLIENT",
        32,
        "Of the requests that wait on password hashing, how many one client (an IPv4 address, an IPv6 /64) may have running or in line at once in one worker, and at most half of GATEHOUSE_ADMISSION_CONCURRENCY; its next ones wait for one of those to end, up to GATEHOUSE_CALL_TIMEOUT, then 503 with Retry-After (behind a proxy, GATEHOUSE_TRUSTED_PROXIES tells clients apart)",
        at_least=1,
    )
    admission_queue_target: float = setting(
        "GATEHOUSE_ADMISSION_QUEUE_TARGET",
        0.05,
        "Seconds a request may wait in line to start; past that 503 with Retry-After. A request that finds no free slot is refused at once when it would wait longer (the line plus itself, times the average slot holding time, over the slots; or the first in line has waited that long)",
        above=0,
    )
    hashing_queue_target: float = setting(
        "GATEHOUSE_HASHING_QUEUE_TARGET",
        1.0,
        "Seconds a request that waits on password hashing (a login, signup, password change or deletion) may wait in line to start, as GATEHOUSE_ADMISSION_QUEUE_TARGET is for the others; a freed slot goes to the client holding the fewest of them, and among those to the one that used the budget least lately",
        above=0,
    )
    body_timeout: float = setting(
        "GATEHOUSE_BODY_TIMEOUT",
        10.0,
        "Seconds a JSON or form body may take to arrive; past that 408 and the connection is closed",
        above=0,
    )
    upload_min_rate: int = setting(
        "GATEHOUSE_UPLOAD_MIN_RATE",
        32 * 1024,
        "Lowest rate in bytes/s of a picture upload once its grace period is over, over each window of GATEHOUSE_UPLOAD_GRACE seconds; below it 408",
        at_least=1,
    )
    upload_grace: float = setting(
        "GATEHOUSE_UPLOAD_GRACE",
        10.0,
        "Seconds a picture upload may take before GATEHOUSE_UPLOAD_MIN_RATE applies",
        above=0,
    )
    header_timeout: float = setting(
        "GATEHOUSE_HEADER_TIMEOUT",
        10.0,
        "Seconds a new connection gets to send a request's headers; past that it is closed",
        above=0,
    )
    keep_alive_timeout: float = setting(
        "GATEHOUSE_KEEP_ALIVE_TIMEOUT",
        10.0,
        "Seconds an idle keep-alive connection is kept (both servers use one timer for this and GATEHOUSE_HEADER_TIMEOUT: the smaller applies)",
        above=0,
    )
    stalled_send_timeout: float = setting(
        "GATEHOUSE_STALLED_SEND_TIMEOUT",
        30.0,
        "Seconds a connection's answer may wait on the client, its receive window shut or nothing acknowledged (a client that stopped reading, reads slower than a small window lets through, or vanished); past that the kernel drops the connection (TCP_USER_TIMEOUT)",
        at_least=1,
        at_most=86_400,
    )
    max_connections: int = setting(
        "GATEHOUSE_HTTP_MAX_CONNECTIONS",
        8192,
        "Connections one worker keeps open at once, idle ones included (an idle one costs about 3 KB)",
        at_least=1,
    )
    max_uploads_in_flight: int = setting(
        "GATEHOUSE_MAX_UPLOADS_IN_FLIGHT",
        8,
        "The bodies of the picture uploads one worker has in progress may buffer at most this many times GATEHOUSE_MAX_AVATAR_BYTES, and no upload starts while this many have arrived whole (waiting for a decoder or decoding); beyond either, 503 with Retry-After (unread, as it starts). An upload whose body has not come holds nothing, and one that has begun is not refused for others arriving whole",
        at_least=1,
    )
    max_uploads_per_client: int = setting(
        "GATEHOUSE_MAX_UPLOADS_PER_CLIENT",
        2,
        "Picture uploads one client (an IPv4 address, an IPv6 /64), and one account, may have in progress at once, from their headers on; beyond that 503 with Retry-After before the body is read (behind a proxy, GATEHOUSE_TRUSTED_PROXIES tells clients apart)",
        at_least=1,
    )
    max_header_bytes: int = setting(
        "GATEHOUSE_MAX_HEADER_BYTES",
        16 * 1024,
        "Largest request head (names and values of all headers); beyond it 431",
        at_least=1024,
    )
    log_level: str = setting("GATEHOUSE_LOG_LEVEL", "INFO", "Log level")

    # Profile pictures
    max_avatar_bytes: int = setting(
        "GATEHOUSE_MAX_AVATAR_BYTES",
        5 * 1024 * 1024,
        "Largest accepted picture upload in bytes",
        at_least=1,
    )
    blob_store: str = setting(
        "GATEHOUSE_BLOB_STORE",
        "database",
        "Where pictures are kept: database (MySQL, through the auth service) or s3",
        choices=("database", "s3"),
    )
    s3_bucket: str = setting("GATEHOUSE_S3_BUCKET", "", "S3 bucket of the pictures (blob store s3)")
    s3_key_prefix: str = setting(
        "GATEHOUSE_S3_KEY_PREFIX", "avatars/", "Prefix of the picture object keys in the bucket"
    )
    s3_endpoint_url: str = setting(
        "GATEHOUSE_S3_ENDPOINT_URL",
        "",
        "URL of an S3-compatible API (MinIO, Ceph, ...); empty for AWS S3",
    )
    s3_region: str = setting(
        "GATEHOUSE_S3_REGION", "", "S3 region; empty takes AWS_REGION / AWS_DEFAULT_REGION"
    )
    s3_timeout: float = setting(
        "GATEHOUSE_S3_TIMEOUT",
        5.0,
        "Seconds allowed to connect to S3 and for each read; a picture read waits at most 5 "
        "times this for S3's answer",
        above=0,
        at_most=300,
    )
    picture_cache_seconds: float = setting(
        "GATEHOUSE_PICTURE_CACHE_SECONDS",
        30.0,
        "Seconds at most a worker serves a picture from memory before asking the blob store again, so a deleted picture is 404 from every pod within it (the pod that deleted it answers 404 at once); 0 keeps none",
        at_least=0,
        at_most=60,
    )
    # Decoding pictures: limits of the header (checked before decoding) and of each decode
    picture_max_side: int = setting(
        "GATEHOUSE_PICTURE_MAX_SIDE",
        8192,
        "Widest and tallest picture accepted, in pixels",
        at_least=1,
    )
    picture_max_pixels: int = setting(
        "GATEHOUSE_PICTURE_MAX_PIXELS",
        16 * 1024 * 1024,
        "Most pixels (width x height) of an accepted picture",
        at_least=1,
    )
    picture_max_aspect_ratio: float = setting(
        "GATEHOUSE_PICTURE_MAX_ASPECT_RATIO",
        20.0,
        "Longest side of an accepted picture divided by its shortest, at most",
        at_least=1,
    )
    picture_max_jpeg_scans: int = setting(
        "GATEHOUSE_PICTURE_MAX_JPEG_SCANS",
        64,
        "Most scans of an accepted progressive JPEG",
        at_least=1,
    )
    picture_decoders: int = setting(
        "GATEHOUSE_PICTURE_DECODERS",
        1,
        "Child processes decoding pictures at once, per worker process; more uploads wait",
        at_least=1,
    )
    picture_cpu_seconds: int = setting(
        "GATEHOUSE_PICTURE_CPU_SECONDS",
        2,
        "User CPU seconds one picture decode may take (3x with system time); beyond, 400 invalid_image",
        at_least=1,
    )
    picture_memory_bytes: int = setting(
        "GATEHOUSE_PICTURE_MEMORY_BYTES",
        320 * 1024 * 1024,
        "Address space of one picture decode's child (RLIMIT_AS); beyond, 400 invalid_image",
        at_least=MIN_PICTURE_MEMORY_BYTES,
    )
    picture_fast_decoders: int = setting(
        "GATEHOUSE_PICTURE_FAST_DECODERS",
        1,
        "Children per worker process decoding only small pictures, so they never wait behind large ones; 0 turns the fast lane off",
        at_least=0,
    )
    picture_fast_max_pixels: int = setting(
        "GATEHOUSE_PICTURE_FAST_MAX_PIXELS",
        2_000_000,
        "Decoded pixels at most of a picture for the fast lane (JPEGs decode at down to 1/8 of their size)",
        at_least=0,
    )
    picture_fast_memory_bytes: int = setting(
        "GATEHOUSE_PICTURE_FAST_MEMORY_BYTES",
        96 * 1024 * 1024,
        "Address space of a fast-lane decoding child; a picture that needs more is decoded again in the main lane",
        at_least=MIN_PICTURE_MEMORY_BYTES,
    )

    def __post_init__(self) -> None:
        problems = bounds_problems(self)
        problems += self.rpc_tls_problems()
        problems += access_problems(self.etcd_access)
        if self.blob_store == "s3" and not self.s3_bucket:
            problems.append(
                "GATEHOUSE_BLOB_STORE=s3 needs GATEHOUSE_S3_BUCKET: set the bucket name"
            )
        if self.ops_port == self.port:
            problems.append("GATEHOUSE_HTTP_OPS_PORT must differ from GATEHOUSE_HTTP_PORT")
        if len(self.csrf_secret) < CSRF_SECRET_MIN_CHARS:
            problems.append(
                f"GATEHOUSE_CSRF_SECRET must have at least {CSRF_SECRET_MIN_CHARS} characters; "
                "generate one with `openssl rand -base64 48`"
            )
        if not self.token_issuer or not self.token_audience:
            problems.append("GATEHOUSE_TOKEN_ISSUER and GATEHOUSE_TOKEN_AUDIENCE must not be empty")
        if self.ping_timeout >= self.call_timeout:
            problems.append("GATEHOUSE_PING_TIMEOUT must be below GATEHOUSE_CALL_TIMEOUT")
        if self.max_in_flight < self.admission_concurrency:
            problems.append("need GATEHOUSE_ADMISSION_CONCURRENCY <= GATEHOUSE_MAX_IN_FLIGHT")
        if self.pool_min_connections > self.pool_max_connections:
            problems.append("need GATEHOUSE_POOL_MIN_CONNECTIONS <= GATEHOUSE_POOL_MAX_CONNECTIONS")
        report_problems(problems)

    @property
    def idle_timeout(self) -> float:
        """The one timer both servers have for "no request headers yet": from a connection's
        start or its last response to the end of the next request's headers."""
        return min(self.header_timeout, self.keep_alive_timeout)
